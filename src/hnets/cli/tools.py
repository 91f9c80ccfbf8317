"""``hnets bench``, ``tune``, ``export``, ``robustness`` and ``equivariance``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .._outputs import EQUIVARIANCE_OUT, ROBUSTNESS_OUT
from ..errors import HNetsError
from . import CHECKPOINT_HELP

__all__ = ["register"]

_DATASET_HELP = (
    "rotmnist, rotfashion or folder:PATH (default: the dataset the model was trained on; "
    "another must have the same classes)"
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench``, ``tune``, ``export``, ``robustness`` and ``equivariance`` commands."""
    _register_bench(sub)
    _register_tune(sub)
    _register_export(sub)
    _register_robustness(sub)
    _register_equivariance(sub)


def _register_bench(sub: argparse._SubParsersAction) -> None:
    """``hnets bench``: speed of HConv2d and HNetMNIST against plain CNNs."""
    bench = sub.add_parser(
        "bench", help="side-by-side speed of HConv2d and HNetMNIST vs plain CNNs"
    )
    bench.add_argument("--repeats", type=int, default=9, help="timed samples per candidate")
    bench.add_argument(
        "--calls",
        type=int,
        default=None,
        help="consecutive calls timed per sample, after an untimed one (default 3 for "
        "the layer, 5 for the models; 1 times single calls)",
    )
    bench.add_argument("--batch-size", type=int, default=46)
    bench.add_argument(
        "--only", choices=["conv", "models", "dispatch", "memory"], help="run one part only"
    )
    bench.add_argument(
        "--tune",
        action="store_true",
        help="models: tune the H-Net first (hnets tune, at --batch-size) and time it tuned "
        "and on the fixed table side by side",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=_bench)


def _register_tune(sub: argparse._SubParsersAction) -> None:
    """``hnets tune``: time the convolution schemes ahead of a run (the tuning cache)."""
    tune = sub.add_parser(
        "tune",
        help="measure which convolution scheme each layer runs fastest here, ahead of time",
        description=(
            "Time the eligible convolution schemes of a model's layers as training and "
            "inference call them, in separate calls, and store the fastest per layer "
            "signature in this machine's tuning cache, which impl='auto' reads in later "
            "runs (without it, a fixed table decides). Run it on a quiet machine. Layers "
            "already in the cache keep their decision unless --again is given."
        ),
    )
    tune.add_argument("--model", default="hnet", help="hnet or cnn (default hnet)")
    tune.add_argument(
        "--checkpoint", metavar="DIR|NAME", help=f"tune this model instead: {CHECKPOINT_HELP}"
    )
    tune.add_argument("--width", type=float, help="channel multiplier (default: the recipe's)")
    tune.add_argument("--batch-size", type=int, default=64, help="training batch (default 64)")
    tune.add_argument(
        "--eval-batch-size", type=int, default=500, help="inference batch (default 500)"
    )
    tune.add_argument(
        "--again",
        action="store_true",
        help="measure every layer anew, replacing decisions already in the cache",
    )
    tune.add_argument("--json", action="store_true", help="print one JSON object")
    tune.set_defaults(handler=_tune)


def _register_export(sub: argparse._SubParsersAction) -> None:
    """``hnets export``: export a checkpoint to plain PyTorch, TorchScript and/or ONNX."""
    exp = sub.add_parser("export", help="export a checkpoint to plain PyTorch and/or ONNX")
    exp.add_argument("--checkpoint", required=True, metavar="DIR|NAME", help=CHECKPOINT_HELP)
    exp.add_argument("--onnx", help="write an ONNX model here and check it with onnxruntime")
    exp.add_argument("--torchscript", help="write a TorchScript model here")
    exp.add_argument(
        "--check-images",
        type=int,
        default=512,
        help="test images used to compare the exported model with the original",
    )
    exp.add_argument("--data-dir")
    exp.add_argument("--dataset", help=_DATASET_HELP)
    exp.add_argument("--variant")
    exp.set_defaults(handler=_export)


def _register_robustness(sub: argparse._SubParsersAction) -> None:
    """``hnets robustness``: test accuracy under further rotation of every image."""
    rob = sub.add_parser("robustness", help="test accuracy with every image rotated further")
    rob.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="DIR|NAME",
        help=f"{CHECKPOINT_HELP}; repeat to compare models on one figure",
    )
    rob.add_argument("--step", type=float, default=15.0, help="angle step in degrees")
    rob.add_argument("--limit", type=int, help="use the first N test images")
    rob.add_argument("--data-dir")
    rob.add_argument("--dataset", help=_DATASET_HELP)
    rob.add_argument("--variant")
    rob.add_argument("--out", default=ROBUSTNESS_OUT, help="output directory for JSON, CSV, figure")
    rob.add_argument(
        "--by-stored-angle",
        action="store_true",
        help="bin accuracy by each test image's own rotation (stand-in data) "
        "instead of rotating the images further",
    )
    rob.add_argument(
        "--originals",
        action="store_true",
        help="rotate the test images' unrotated originals (crisp, upright; datasets built "
        "here by the rotation protocol, needs their idx files) instead of the stored images",
    )
    rob.set_defaults(handler=_robustness)


def _register_equivariance(sub: argparse._SubParsersAction) -> None:
    """``hnets equivariance``: how logits and feature maps change under rotations."""
    eqv = sub.add_parser("equivariance", help="how logits and feature maps change under rotations")
    eqv.add_argument("--checkpoint", required=True, metavar="DIR|NAME", help=CHECKPOINT_HELP)
    eqv.add_argument(
        "--images",
        "--digits",
        dest="images",
        type=int,
        default=8,
        help="number of test images (--digits: the same)",
    )
    eqv.add_argument("--angles", default="90,180,270,15,30,45", help="degrees, comma-separated")
    eqv.add_argument("--data-dir")
    eqv.add_argument("--dataset", help=_DATASET_HELP)
    eqv.add_argument("--variant")
    eqv.add_argument("--out", default=EQUIVARIANCE_OUT, help="output directory for JSON and figure")
    eqv.set_defaults(handler=_equivariance)


def _bench(args: argparse.Namespace) -> int:
    from .. import bench

    if args.repeats < 1 or args.batch_size < 1 or (args.calls is not None and args.calls < 1):
        raise HNetsError("--repeats, --calls and --batch-size must be at least 1")
    report: dict[str, object] = {"machine": bench.machine_description(), "batch": args.batch_size}
    if args.only in (None, "conv"):
        report["conv"] = bench.bench_conv(
            batch=args.batch_size, repeats=args.repeats, calls=args.calls or 3
        )
    if args.only in (None, "models"):
        report["models"] = bench.bench_models(
            batch=args.batch_size, repeats=args.repeats, calls=args.calls or 5, tune=args.tune
        )
    if args.only in (None, "dispatch"):
        from ..tune import tune_model

        model = bench.HNetMNIST(width=1.2)
        report["dispatch"] = tune_model(model, batch_size=args.batch_size)
    if args.only in (None, "memory"):
        report["memory"] = bench.bench_memory(batch=args.batch_size)
    if args.json:
        print(json.dumps(bench.to_jsonable(report), indent=2))
    else:
        print(bench.format_report(report))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .. import tune
    from ..checkpoint import load_model
    from ..models import build_model
    from ..nn import dispatch
    from ..training import DEFAULT_MODEL_OPTIONS

    if args.batch_size < 1 or args.eval_batch_size < 1:
        raise HNetsError("--batch-size and --eval-batch-size must be at least 1")
    shape: tuple[int, int, int] = (1, 28, 28)
    if args.checkpoint:
        model = load_model(args.checkpoint)
        recorded = model.hnets_checkpoint.get("extra", {}).get("image_shape")
        if recorded:
            shape = (int(recorded[0]), int(recorded[1]), int(recorded[2]))
    else:
        options = dict(DEFAULT_MODEL_OPTIONS.get(args.model, {}))
        if args.width is not None:
            options["width"] = args.width
        model = build_model(args.model, **options)
    start = time.perf_counter()
    rows = tune.tune_model(
        model,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        image_shape=shape,
        again=args.again,
    )
    if args.json:
        print(json.dumps({"cache": str(dispatch.cache_path()), "layers": rows}, indent=2))
        return 0
    print(tune.format_tuning(rows) if rows else "no harmonic convolutions to tune")
    took = time.perf_counter() - start
    print(f"cache: {dispatch.cache_path()} ({took:.1f} s)", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..export import export_checkpoint

    result = export_checkpoint(
        args.checkpoint,
        onnx_path=args.onnx,
        script_path=args.torchscript,
        n_images=args.check_images,
        data_dir=args.data_dir,
        variant=args.variant,
        dataset=args.dataset,
    )
    for line in result["lines"]:
        print(line)
    return 0


def _robustness(args: argparse.Namespace) -> int:
    from ..analysis import robustness_study

    result = robustness_study(
        args.checkpoint,
        step_degrees=args.step,
        limit=args.limit,
        data_dir=args.data_dir,
        variant=args.variant,
        out_dir=Path(args.out),
        by_stored_angle=args.by_stored_angle,
        dataset=args.dataset,
        originals=args.originals,
    )
    print(result["table"])
    print(f"wrote {', '.join(str(p) for p in result['files'])}", file=sys.stderr)
    return 0


def _equivariance(args: argparse.Namespace) -> int:
    from ..analysis import equivariance_study

    angles = [float(a) for a in args.angles.split(",") if a.strip()]
    result = equivariance_study(
        args.checkpoint,
        n_digits=args.images,
        angles_degrees=angles,
        data_dir=args.data_dir,
        variant=args.variant,
        out_dir=Path(args.out),
        dataset=args.dataset,
    )
    print(result["table"])
    print(f"wrote {', '.join(str(p) for p in result['files'])}", file=sys.stderr)
    return 0
