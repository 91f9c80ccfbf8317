"""The study's plan: :class:`StudyConfig` (what it covers), :class:`StudyRun` (one run).

Each run is a set of :class:`~hnets.training.TrainConfig` settings
(:meth:`StudyRun.train_settings`); ``hnets study`` trains them through
:func:`hnets.training.train` and ``--plan`` prints them as ``hnets train`` command
lines made from the same settings (:func:`hnets.training.train_argv`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data.protocol import STANDIN_SIZES as _PROTOCOL_SIZES
from ..data.protocol import rotated_variant
from ..data.registry import DATASETS, get_dataset
from ..errors import HNetsError
from ..training import DEFAULT_EVAL_BLUR, TrainConfig, train_argv

__all__ = ["StudyConfig", "StudyRun", "UPRIGHT_RECIPE", "plan_study"]

#: The upright-train / rotated-test runs: the settings the shipped upright models
#: (``hnet-upright``, ``cnn-upright``) were trained with, as their
#: ``config.json`` records them (a test holds the two together), so that the study's
#: upright runs repeat those models (at width 1: their ``model_options`` are empty, the
#: models' own defaults). Split sizes are the rotation protocol's (``_PROTOCOL_SIZES``: the
#: full size is train+valid, an upright run trains on all of train).
UPRIGHT_RECIPE: dict[str, Any] = {
    "train_split": "train",
    "epochs": 20,
    "augment": False,
    "width": 1.0,
}


@dataclass(frozen=True)
class StudyRun:
    """One training run of the study: what to train, and for how long."""

    dataset: str
    variant: str
    model: str
    train_size: int
    seed: int
    epochs: int
    full: bool
    augment: bool = True
    width: float | None = None
    limit_eval: int | None = None
    eval_blur: float | None = None
    valid_every: int = 1

    @property
    def name(self) -> str:
        """The run directory's name."""
        return f"{self.dataset}-{self.variant}-{self.model}-n{self.train_size}-s{self.seed}"

    def settings(self) -> dict[str, Any]:
        """Every field, as a record stores it (a record is this run's only when they match)."""
        return asdict(self)

    def train_settings(self, data_dir: str | Path | None = None) -> dict[str, Any]:
        """The :class:`~hnets.training.TrainConfig` fields this run sets, in a fixed order.

        The others are the recipe's (or, when the run resumes, its saved run's):
        :func:`hnets.training.run_config` turns these into the run's config, and
        :func:`hnets.training.train_argv` into its command line, so the two agree.
        """
        settings: dict[str, Any] = {
            "dataset": self.dataset,
            "data_variant": self.variant,
            "model": self.model,
            "seed": self.seed,
            "epochs": self.epochs,
            "train_split": "train+valid" if self.full else "train",
        }
        if not self.full:
            settings["train_size"] = self.train_size
        if not self.augment:
            settings["augment"] = False
        options = {"width": self.width, "eval_blur": self.eval_blur}
        if any(v is not None for v in options.values()):
            settings["model_options"] = {k: v for k, v in options.items() if v is not None}
        if self.valid_every > 1:
            settings["valid_every"] = self.valid_every
        if self.limit_eval is not None:
            settings["limit_eval"] = self.limit_eval
        if data_dir is not None:
            settings["data_dir"] = str(data_dir)
        return settings

    def argv(self, runs_dir: Path, data_dir: str | Path | None = None) -> list[str]:
        """The ``hnets`` arguments that train this run (``--resume``: idempotent)."""
        out = ["--out", str(runs_dir / self.name), "--resume", "--no-progress"]
        return ["train", *train_argv(self.train_settings(data_dir)), *out]


@dataclass
class StudyConfig:
    """What the study covers.

    Attributes:
        datasets, models, sizes, seeds: the grid of the sample-efficiency study;
            ``full_size`` (12,000 = train+valid) is the recipe's run.
        upright: also train each model once on the upright variant (train split,
            no augmentation, width 1, 20 epochs) and test it on rotated images.
        recipe_epochs: epochs of a full-size run (the recipe's 90).
        small_steps: optimizer steps of a run on fewer images (see the module
            docstring); ``batch_size`` is the recipe's 64.
        validations: about how many times such a run validates (every
            ``epochs // validations`` epochs, and after the last): at 1,000 images
            validating all 500 epochs would cost about 40% of the run.
        limit_eval: score only the first N validation and test images (``--quick``).
        eval_blur: the rotated runs' ``--eval-blur`` (the recipe's; given explicitly so
            that runs begun before the option existed adopt it when they resume); the
            upright runs train on crisp images and use none.
        upright_size, upright_epochs: the upright runs' training size and length.
        crisp_images: how many test images the crisp-input check uses.
    """

    datasets: tuple[str, ...] = ("rotmnist", "rotfashion")
    models: tuple[str, ...] = ("hnet", "cnn")
    sizes: tuple[int, ...] = (1_000, 2_000, 5_000, 12_000)
    seeds: tuple[int, ...] = (0, 1, 2)
    upright: bool = True
    full_size: int = _PROTOCOL_SIZES["train"] + _PROTOCOL_SIZES["valid"]
    recipe_epochs: int = TrainConfig.epochs
    small_steps: int = 8_000
    validations: int = 100
    batch_size: int = TrainConfig.batch_size
    limit_eval: int | None = None
    eval_blur: float = DEFAULT_EVAL_BLUR
    upright_size: int = _PROTOCOL_SIZES["train"]
    upright_epochs: int = UPRIGHT_RECIPE["epochs"]
    crisp_images: int = 10_000
    quick: bool = field(default=False, repr=False)

    @classmethod
    def quick_config(cls, **overrides: Any) -> StudyConfig:
        """A minutes-long smoke version: tiny sizes, two seeds, a few steps, 200 test images."""
        base = cls(
            sizes=(100, 200),
            seeds=(0, 1),
            small_steps=6,
            limit_eval=200,
            upright_size=200,
            upright_epochs=1,
            crisp_images=200,
            quick=True,
        )
        return replace(base, **overrides)

    def check(self) -> StudyConfig:
        """Raise :class:`HNetsError` naming the first bad setting; return ``self``."""
        for name in self.datasets:
            get_dataset(name)  # one line listing the known datasets
        from ..models import model_names

        for model in self.models:
            if model not in model_names():
                raise HNetsError(f"unknown model {model!r}: choose from {', '.join(model_names())}")
        for what, values in (("sizes", self.sizes), ("seeds", self.seeds)):
            if not values or any(v < (1 if what == "sizes" else 0) for v in values):
                raise HNetsError(f"--{what} needs values >= {1 if what == 'sizes' else 0}")
        if any(size > self.full_size for size in self.sizes):
            raise HNetsError(f"--sizes: at most {self.full_size} (train+valid)")
        if self.small_steps < 1:
            raise HNetsError("small_steps must be at least 1")
        if self.validations < 1:
            raise HNetsError("validations must be at least 1")
        return self

    def valid_every_for(self, size: int) -> int:
        """Epochs between validations: about ``validations`` per small run (at least 1)."""
        if size >= self.full_size:
            return 1  # train+valid: nothing to validate
        return max(1, self.epochs_for(size) // self.validations)

    def epochs_for(self, size: int) -> int:
        """The length rule: the recipe's epochs at full size, else ``small_steps`` steps."""
        if size >= self.full_size:
            return self.recipe_epochs
        return math.ceil(self.small_steps / math.ceil(size / self.batch_size))


def plan_study(config: StudyConfig) -> list[StudyRun]:
    """Every run of the study, in a fixed order (dataset, size, seed, model)."""
    config.check()
    runs = []
    for dataset in config.datasets:
        variant = rotated_variant(DATASETS[dataset])
        for size in config.sizes:
            for seed in config.seeds:
                for model in config.models:
                    runs.append(
                        StudyRun(
                            dataset,
                            variant,
                            model,
                            size,
                            seed,
                            config.epochs_for(size),
                            full=size >= config.full_size,
                            limit_eval=config.limit_eval,
                            eval_blur=config.eval_blur,
                            valid_every=config.valid_every_for(size),
                        )
                    )
        if config.upright:
            for model in config.models:
                runs.append(
                    StudyRun(
                        dataset,
                        "upright",
                        model,
                        config.upright_size,
                        0,
                        config.upright_epochs,
                        full=UPRIGHT_RECIPE["train_split"] == "train+valid",
                        augment=UPRIGHT_RECIPE["augment"],
                        width=UPRIGHT_RECIPE["width"],
                        limit_eval=config.limit_eval,
                        eval_blur=0.0,
                    )
                )
    return runs
