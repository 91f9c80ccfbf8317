"""What a training run is: :class:`TrainConfig`, its checks, and the recipe's defaults.

Every setting is one field of :class:`TrainConfig`, with its help text in the field's
metadata (``field(metadata={"help": ...})``): ``hnets train`` builds one flag per field
from it, so a new option is one line here. Metadata keys:

* ``help``: what the setting does. A field whose default is ``None`` says there what
  ``None`` means; for the others ``hnets train --help`` appends the default.
* ``runtime``: the setting says where and how a run executes, not what it computes,
  so it may change when a run is resumed (``device``, ``num_workers``...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..data.sources import FOLDER_OPTIONS, data_source
from ..errors import DataError
from ..models import model_names

__all__ = [
    "TrainConfig",
    "RUNTIME_FIELDS",
    "DEFAULT_LR",
    "DATASET_LR",
    "recipe_lr",
    "DEFAULT_MODEL_OPTIONS",
    "DEFAULT_EVAL_BLUR",
    "EVAL_ONLY_MODEL_OPTIONS",
    "SCHEDULES",
    "OPTIMIZERS",
    "DEVICES",
    "TRAIN_SPLITS",
    "FLAG_NAMES",
    "MODEL_OPTION_FLAGS",
    "with_settings",
    "train_argv",
]

SCHEDULES = ("cosine", "onecycle", "step", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd")
DEVICES = ("auto", "cpu", "cuda", "mps")
TRAIN_SPLITS = ("train", "train+valid")

#: Peak learning rate of the recipe, per model (chosen on validation error: docs/results.md).
DEFAULT_LR = {"hnet": 5e-3, "cnn": 1e-2}
#: Per-dataset exceptions to :data:`DEFAULT_LR` (dataset name -> model -> rate), chosen on
#: that dataset's validation split by the protocol docs/results.md declares for it.
DATASET_LR: dict[str, dict[str, float]] = {"rotfashion": {"hnet": 1e-2, "cnn": 2e-2}}
#: Model options of the recipe, per model: widths that spend the 35k-parameter budget
#: about equally (H-Net 32,482 parameters, CNN 32,100; chosen on validation error).
#: Options given explicitly win; the model classes' own defaults are unchanged.
DEFAULT_MODEL_OPTIONS: dict[str, dict[str, Any]] = {"hnet": {"width": 1.2}, "cnn": {"width": 1.15}}
#: The recipe's ``eval_blur`` (pixels) for runs that train with rotation augmentation:
#: every training image is then resampled twice, a crisp input never; a Gaussian of
#: this width at inference (:class:`hnets.nn.EvalBlur`) closes the gap (chosen on
#: validation: docs/results.md). Without augmentation the default is 0.
DEFAULT_EVAL_BLUR = 0.5
#: Model options that act at evaluation only: they may change when a run resumes.
EVAL_ONLY_MODEL_OPTIONS = frozenset({"eval_blur"})


def recipe_lr(model: str, dataset: str = "rotmnist") -> float:
    """The recipe's peak learning rate for ``model`` on ``dataset``.

    :data:`DATASET_LR`'s entry where the dataset has one for the model, else the model's
    :data:`DEFAULT_LR` (also for ``folder:PATH`` datasets).
    """
    return DATASET_LR.get(dataset, {}).get(model, DEFAULT_LR[model])


def _lr_help() -> str:
    parts = [", ".join(f"{lr:g} for {model}" for model, lr in DEFAULT_LR.items())]
    for dataset, rates in DATASET_LR.items():
        parts.append(f"{dataset}: " + ", ".join(f"{lr:g} for {m}" for m, lr in rates.items()))
    return "peak learning rate (default: " + "; ".join(parts) + ")"


def _about(text: str, *, runtime: bool = False) -> dict[str, Any]:
    """A field's metadata: its help text, and whether it may change on resume."""
    return {"help": text, "runtime": runtime}


_FOLDER = "folder:PATH only: "


@dataclass
class TrainConfig:
    """A training run's settings: plain, JSON-serialisable data (the recipe's defaults here).

    Each field's help text (``dataclasses.fields(TrainConfig)[i].metadata["help"]``, shown
    by ``hnets train --help``) says what it does. More detail on some:

    * ``model_options`` go to :func:`hnets.build_model` (``width``, ``max_order``, ...) on
      top of the recipe's :data:`DEFAULT_MODEL_OPTIONS` for that model; ``lr`` ``None``
      takes the recipe's value for the model and dataset (:func:`recipe_lr`).
    * ``schedule``: ``cosine`` (linear warmup over ``warmup_epochs``, then cosine to 0),
      ``onecycle`` (cosine up from ``lr/25`` over 30% of the steps, then down to
      ``lr/25e4``), ``step`` (x0.1 at 1/2 and 3/4 of the epochs) or ``constant``;
      every schedule but ``onecycle`` starts with the linear warmup.
    * ``optimizer``: ``sgd`` is Nesterov momentum 0.9. Weight decay applies to
      convolution and linear weights only.
    * ``train_split``: ``train`` validates every ``valid_every`` epochs and after the
      last, and keeps the best validated epoch's model; ``train+valid`` has no
      validation and keeps the last epoch's model.
    * ``dataset``: ``folder:PATH`` is the user's images (see :mod:`hnets.data.folder`);
      the model is built for the dataset's channels and classes. ``data_variant``
      ``None`` is the dataset's default (see :func:`hnets.data.ensure_dataset`).
    * ``train_size`` draws a stratified subset with ``seed``
      (:func:`hnets.data.subsets.stratified_subset`), for sample-efficiency studies.
    * ``test`` ``False`` is for recipe sweeps, which must be chosen on validation error
      with the test set unread; ``summary.json`` then has ``null`` test figures.
    """

    model: str = field(default="hnet", metadata=_about(" or ".join(model_names())))
    model_options: dict[str, Any] = field(
        default_factory=dict,
        metadata=_about("options of hnets.build_model, on top of DEFAULT_MODEL_OPTIONS"),
    )
    epochs: int = field(default=90, metadata=_about("passes over the training data"))
    batch_size: int = field(default=64, metadata=_about("training batch size, per process"))
    lr: float | None = field(
        default=None,
        metadata=_about(_lr_help()),
    )
    schedule: str = field(default="cosine", metadata=_about(", ".join(SCHEDULES)))
    warmup_epochs: float = field(default=1.0, metadata=_about("epochs of linear warmup"))
    optimizer: str = field(default="adamw", metadata=_about(", ".join(OPTIMIZERS)))
    weight_decay: float = field(default=1e-4, metadata=_about("of convolution and linear weights"))
    label_smoothing: float = field(
        default=0.05, metadata=_about("of the training loss (not the validation or test loss)")
    )
    augment: bool = field(
        default=True, metadata=_about("rotate every training image by a random angle")
    )
    quarter_turns: float = field(
        default=0.0,
        metadata=_about(
            "with augment: the fraction of training images turned by an exact multiple of "
            "90 degrees (no interpolation, so no extra blur) instead of a random angle"
        ),
    )
    train_split: str = field(
        default="train+valid",
        metadata=_about(
            f"{' or '.join(TRAIN_SPLITS)}; train+valid skips validation and keeps the last epoch"
        ),
    )
    valid_every: int = field(
        default=1,
        metadata=_about(
            "with train_split train: validate every N epochs and after the last; the best "
            "model is chosen among the validated epochs"
        ),
    )
    seed: int = field(
        default=0, metadata=_about("seeds initialisation, data order and augmentation")
    )
    device: str = field(
        default="auto",
        metadata=_about(f"{', '.join(DEVICES)}; auto is CUDA, else MPS, else CPU", runtime=True),
    )
    amp: bool = field(
        default=False,
        metadata=_about(
            "mixed precision on CUDA (bfloat16 where supported, else float16 with a "
            "gradient scaler); ignored elsewhere"
        ),
    )
    compile: bool = field(
        default=False, metadata=_about("torch.compile the model for training", runtime=True)
    )
    dataset: str = field(
        default="rotmnist",
        metadata=_about(
            "rotmnist, rotfashion or folder:PATH (your own images: PATH/train/<class>/...)"
        ),
    )
    data_dir: str | None = field(
        default=None,
        metadata=_about("where data lives (default: $HNETS_DATA or ~/.cache/hnets)", runtime=True),
    )
    data_variant: str | None = field(
        default=None,
        metadata=_about(
            "rotmnist: original, standin or upright (default: original if prepared, else "
            "standin); rotfashion: rotated or upright (default rotated)"
        ),
    )
    image_size: int | None = field(
        default=None,
        metadata=_about(
            f"{_FOLDER}side of the square images in the cache (default 28 for gray images, "
            "else the median side)"
        ),
    )
    channels: int | None = field(
        default=None,
        metadata=_about(f"{_FOLDER}1 (gray) or 3 (RGB) (default 3 if any image has colour)"),
    )
    skip_bad: bool = field(
        default=False,
        metadata=_about(f"{_FOLDER}skip files that are not readable images (counted)"),
    )
    limit_train: int | None = field(
        default=None, metadata=_about("use the first N training images, for quick runs")
    )
    train_size: int | None = field(
        default=None,
        metadata=_about("train on a stratified subset of N training images, drawn with the seed"),
    )
    limit_eval: int | None = field(
        default=None, metadata=_about("use the first N validation and test images")
    )
    eval_batch_size: int = field(
        default=500, metadata=_about("batch size of validation and testing", runtime=True)
    )
    num_workers: int = field(
        default=0,
        metadata=_about(
            "DataLoader workers; 0 indexes in-memory tensors (the fastest for this data)",
            runtime=True,
        ),
    )
    test: bool = field(
        default=True,
        metadata=_about(
            "score the final model on the whole test split at the end; off for recipe "
            "sweeps chosen on validation only",
            runtime=True,
        ),
    )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error, missing ones default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        data = dict(data)
        options = data.get("model_options")
        if isinstance(options, dict) and "eval_blur" not in options:
            # saved before the option existed: those runs evaluated without a blur
            data["model_options"] = {**options, "eval_blur": 0.0}
        return cls(**data).check()

    def check(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first bad setting; return ``self``.

        Fills in the recipe's per-model defaults: ``lr`` ``None`` and the model options
        not given (``eval_blur``: :data:`DEFAULT_EVAL_BLUR` with ``augment``, else 0).
        """
        if self.model not in model_names():
            raise ValueError(
                f"unknown model {self.model!r}; choose one of {', '.join(model_names())}"
            )
        if not isinstance(self.model_options, dict):
            raise ValueError("model_options must be a dict")
        self.model_options = {**DEFAULT_MODEL_OPTIONS.get(self.model, {}), **self.model_options}
        self.model_options.setdefault("eval_blur", DEFAULT_EVAL_BLUR if self.augment else 0.0)
        self._check_counts()
        if self.lr is None:
            self.lr = recipe_lr(self.model, self.dataset)
        self._check_rates()
        for name, allowed in (
            ("schedule", SCHEDULES),
            ("optimizer", OPTIMIZERS),
            ("train_split", TRAIN_SPLITS),
            ("device", DEVICES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        self._check_data()
        return self

    def _check_counts(self) -> None:
        for name, low in (
            ("epochs", 1),
            ("valid_every", 1),
            ("batch_size", 1),
            ("eval_batch_size", 1),
            ("num_workers", 0),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("limit_train", "limit_eval", "train_size", "image_size", "channels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")

    def _check_rates(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_epochs < math.inf:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not 0 <= self.quarter_turns <= 1:
            raise ValueError(f"quarter_turns must be in [0, 1], got {self.quarter_turns!r}")

    def _check_data(self) -> None:
        if not isinstance(self.dataset, str):
            raise ValueError(f"dataset must be a name, got {self.dataset!r}")
        source = data_source(self.dataset)  # DataError listing the known names
        try:
            source.check_variant(self.data_variant)
        except DataError as exc:
            raise ValueError(f"data_variant: {exc}") from None
        try:
            source.check_options({name: getattr(self, name) for name in FOLDER_OPTIONS})
        except DataError as exc:
            raise ValueError(str(exc)) from None


#: Settings that say where and how a run executes, not what it computes: they may
#: change when a run is resumed.
RUNTIME_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["runtime"])


#: ``hnets train`` flags spelled otherwise than ``--field-name``.
FLAG_NAMES = {"data_variant": "--variant"}
#: ``hnets train`` flags of the model options (``--channels`` is already a folder
#: dataset's image channels, hence ``--model-channels``).
MODEL_OPTION_FLAGS = {
    "width": "--width",
    "channels": "--model-channels",
    "max_order": "--max-order",
    "eval_blur": "--eval-blur",
}


def with_settings(base: TrainConfig, settings: Mapping[str, Any]) -> TrainConfig:
    """``base`` with ``settings`` (TrainConfig fields) on top; ``model_options`` merge.

    The one rule ``hnets train`` applies to its flags (on :class:`TrainConfig`'s
    defaults, or on the saved run's with ``--resume``), for any caller that trains
    with a partial set of settings.
    """
    options = {**base.model_options, **settings.get("model_options", {})}
    rest = {k: v for k, v in settings.items() if k != "model_options"}
    return dataclasses.replace(base, **rest, model_options=options)


def train_argv(settings: Mapping[str, Any]) -> list[str]:
    """The ``hnets train`` arguments that give ``settings``, in their order.

    ``settings`` are :class:`TrainConfig` fields (``model_options``: those of
    :data:`MODEL_OPTION_FLAGS`); :func:`with_settings` of the same mapping is the
    config those arguments train with.
    """
    args: list[str] = []
    for name, value in settings.items():
        if name == "model_options":
            for option, option_value in value.items():
                args += [MODEL_OPTION_FLAGS[option], _flag_value(option_value)]
            continue
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, _flag_value(value)]
    return args


def _flag_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
