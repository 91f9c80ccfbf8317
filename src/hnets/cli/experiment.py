"""``hnets train``, ``hnets test`` and ``hnets predict``: argument parsing only."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from ..training import DEFAULT_EVAL_BLUR, DEFAULT_MODEL_OPTIONS, DEVICES, TrainConfig
from ..training.config import FLAG_NAMES, MODEL_OPTION_FLAGS, with_settings
from . import CHECKPOINT_HELP, int_list

__all__ = ["register", "train_config"]

_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TRAIN_TYPES = typing.get_type_hints(TrainConfig)
_DATASET_HELP = _TRAIN_FIELDS["dataset"].metadata["help"]
#: ``hnets train`` options that map one to one onto :class:`TrainConfig` fields;
#: ``model_options`` is filled by ``--width``, ``--model-channels``, ``--max-order`` and
#: ``--eval-blur`` instead.
_CONFIG_FLAGS = set(_TRAIN_FIELDS) - {"model_options"}
#: their argparse destinations -> the model options they set
_MODEL_OPTION_FLAGS = {
    "width": "width",
    "model_channels": "channels",
    "max_order": "max_order",
    "eval_blur": "eval_blur",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train``, ``test`` and ``predict`` commands."""
    _add_train(subparsers)
    _add_test(subparsers)
    _add_predict(subparsers)


def _per_model(values: dict[str, Any]) -> str:
    """``{"hnet": 1.2, "cnn": 1.15}`` -> ``"1.2 for hnet, 1.15 for cnn"`` (help texts)."""
    return ", ".join(f"{v:g} for {k}" for k, v in values.items())


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on Rot-MNIST, Rot-Fashion-MNIST or your own images",
        description=(
            "Train an H-Net or a CNN on Rot-MNIST (--dataset for another). Writes "
            "model.safetensors and config.json (the best model by validation accuracy), "
            "checkpoint.pt (for --resume), metrics.jsonl, and at the end summary.json "
            "(test accuracy on the whole test split) and curves.png. Runs unchanged under "
            "torchrun for several processes."
        ),
    )
    for name in _TRAIN_FIELDS:  # a flag per setting, in TrainConfig's order
        if name == "model_options":
            _add_model_option_flags(p)
        else:
            _add_config_flag(p, name)
    p.add_argument("--out", help="run directory (default runs/<model>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from checkpoint.pt (options not given "
        "are taken from it; --epochs may grow)",
    )
    mode.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(handler=_train)


def _add_config_flag(p: argparse.ArgumentParser, name: str) -> None:
    """The flag of :class:`TrainConfig` field ``name``: its type, help and default.

    Defaults are left out (SUPPRESS) so that --resume can tell the options given from
    those taken from the saved run; the help shows TrainConfig's defaults.
    """
    f = _TRAIN_FIELDS[name]
    kind = _flag_type(_TRAIN_TYPES[name])
    flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    how: dict[str, Any] = (
        {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
    )
    p.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=_flag_help(f), **how)


def _flag_type(annotation: Any) -> type:
    """``bool``, ``int``, ``float`` or ``str`` from a field's annotation (``X | None``: X)."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if len(kinds) != 1 or kinds[0] not in (bool, int, float, str):
        raise TypeError(f"hnets train has no flag for a setting of type {annotation}")
    return kinds[0]


def _flag_help(f: dataclasses.Field) -> str:
    """The field's help text, with its default where it has one (``None``: said in the text)."""
    text = f.metadata["help"]
    if f.default is not None and f.default is not dataclasses.MISSING:
        shown = ("on" if f.default else "off") if isinstance(f.default, bool) else f.default
        text += f" (default {shown})"
    return text.replace("%", "%%")  # argparse formats help texts with %


def _model_options(text: str) -> dict[str, Any]:
    """``--model-options``: a JSON object of :func:`hnets.build_model` options."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def _add_model_option_flags(p: argparse.ArgumentParser) -> None:
    """``--width``, ``--model-channels``, ``--max-order``, ``--eval-blur``, ``--model-options``."""
    s = argparse.SUPPRESS
    p.add_argument(
        "--model-options",
        dest="model_options_json",
        type=_model_options,
        default=s,
        metavar="JSON",
        help="more model options as a JSON object: for the hnet any option of "
        'hnets.models.HNet, e.g. \'{"channels": [8, 16, 32, 64], "pool": [2, 2, 2, 1]}\' '
        "(default: the stages of hnets.models.default_hnet_options for the images' size); "
        "the flags above win where both set an option",
    )
    p.add_argument(
        MODEL_OPTION_FLAGS["width"],
        type=float,
        default=s,
        help="channel multiplier (default: "
        + _per_model({k: v["width"] for k, v in DEFAULT_MODEL_OPTIONS.items()})
        + ")",
    )
    p.add_argument(
        MODEL_OPTION_FLAGS["channels"],
        dest="model_channels",  # --channels is a folder dataset's image channels
        type=int_list,
        default=s,
        metavar="C1,C2,...",
        help="channels per stage, times --width (pass --width 1 for exactly these): three "
        "for the hnet (its 28x28, 14x14 and 7x7 stages; default 8,16,32; one per stage with "
        "--model-options), six for the cnn "
        "(default 12,12,24,24,30,30)",
    )
    p.add_argument(
        MODEL_OPTION_FLAGS["max_order"],
        type=int,
        default=s,
        help="highest rotation order of the hnet (default 1)",
    )
    p.add_argument(
        MODEL_OPTION_FLAGS["eval_blur"],
        type=float,
        default=s,
        metavar="SIGMA",
        help="Gaussian low-pass of the input at evaluation only, in pixels, for crisp "
        f"inputs (default {DEFAULT_EVAL_BLUR:g} with augmentation, 0 without; may change "
        "on --resume)",
    )


def _add_test(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "test",
        help="evaluate a saved model on the test (or valid) split of its dataset",
        description=(
            "Print accuracy, error, per-class accuracy and the confusion matrix of a saved "
            "or pretrained model. The confusion-matrix figure is drawn only with --figure; "
            "nothing else is written."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR|NAME", help=CHECKPOINT_HELP)
    p.add_argument("--split", default="test", help="valid or test (default test)")
    p.add_argument("--data-dir", help="where data lives (default: $HNETS_DATA or ~/.cache/hnets)")
    p.add_argument(
        "--dataset",
        help=f"{_DATASET_HELP} (default: the one the model was trained on; another must have "
        "the same classes)",
    )
    p.add_argument("--variant", help="data variant (default: the one the model was trained on)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--batch-size", type=int, default=500, help="(default 500)")
    p.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} (default auto)")
    p.add_argument("--figure", metavar="PATH", help="where to save the confusion matrix figure")
    p.add_argument(
        "--crisp",
        action="store_true",
        help="also score the split's unrotated originals and their exact 90/180/270-degree "
        "turns (datasets built here by the rotation protocol; needs their idx files)",
    )
    p.add_argument(
        "--eval-blur",
        type=float,
        metavar="SIGMA",
        help="evaluate with this input low-pass (pixels; 0: none) instead of the model's own "
        "eval_blur; the saved model is not changed",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    p.set_defaults(handler=_test)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a saved model",
        description=(
            "Classify image files (PNG, JPEG, PGM, BMP...) with a saved model; classes are "
            "named as in the model's dataset. For Rot-MNIST models each image is converted "
            "to grayscale, inverted if the digit is dark on light paper, cropped, fitted into "
            "20x20 and centred by mass in 28x28, as MNIST was made; for Rot-Fashion-MNIST "
            "the garment is fitted into 28x28 as Fashion-MNIST was made; for a folder "
            "dataset the image is resized as the folder's images were."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR|NAME", help=CHECKPOINT_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    p.add_argument("--batch-size", type=int, default=256, help="(default 256)")
    p.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} (default auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    p.set_defaults(handler=_predict)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields (and model options) an ``hnets train`` command line gives."""
    given = {name: getattr(args, name) for name in _CONFIG_FLAGS if hasattr(args, name)}
    options = dict(getattr(args, "model_options_json", {}))
    options |= {
        option: getattr(args, dest) for dest, option in _MODEL_OPTION_FLAGS.items()
        if hasattr(args, dest)
    }  # fmt: skip
    return {**given, "model_options": options}


def train_config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The :class:`TrainConfig` an ``hnets train`` command line asks for.

    ``base`` supplies the settings not given (default: :class:`TrainConfig`'s
    defaults; on ``--resume``, the saved run's).
    """
    return with_settings(base or TrainConfig(), _settings(args))


def _train(args: argparse.Namespace) -> int:
    from ..training import run_config, train

    model = getattr(args, "model", TrainConfig.model)
    out = Path(args.out) if args.out else Path("runs") / str(model)
    config = run_config(out, _settings(args), resume=args.resume)
    summary = train(
        config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
    )
    if summary and summary["test_n"] is None:  # rank 0, --no-test
        valid = summary["valid_accuracy"]
        shown = "no validation" if valid is None else f"best validation accuracy {valid:.2%}"
        print(f"{shown} (epoch {summary['best_epoch']}); test split not read (--no-test)")
    elif summary:  # rank 0
        data = summary["data"]
        kind = "stand-in " if data["standin"] else ""
        print(
            f"test accuracy {summary['test_accuracy']:.2%} (error {summary['test_error']:.2%}) "
            f"on {summary['test_n']} {kind}{data['title']} test images ({data['variant']}); "
            f"best epoch {summary['best_epoch']}"
        )
        print(
            f"results in {out}: model.safetensors, config.json, summary.json, metrics.jsonl, "
            "curves.png"
        )
    return 0


def _test(args: argparse.Namespace) -> int:
    from ..analysis.scores import evaluate_checkpoint, format_evaluation
    from ..training import resolve_device

    report = evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        dataset=args.dataset,
        variant=args.variant,
        data_dir=args.data_dir,
        limit=args.limit,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
        eval_blur=args.eval_blur,
        crisp=args.crisp,
        figure=args.figure,
        progress=not args.json,
    )
    print(json.dumps(report) if args.json else format_evaluation(report))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..evaluation import iter_predictions
    from ..training import resolve_device

    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device)
    results = iter_predictions(model, args.images, batch_size=args.batch_size, top=args.top)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "predictions": list(results)}))
        return 0
    for result in results:
        ranked = " | ".join(f"{r['class']} {r['probability']:.1%}" for r in result["top"])
        print(f"{result['path']}: {result['class']}   ({ranked})")
    return 0
