"""Training: one loop to read top to bottom, checkpoints, resume, DDP.

:func:`train` is the whole story (:mod:`.loop`). Each concern has a module of its own:

* :mod:`.config`: :class:`TrainConfig`, the settings of a run, their checks and help
  texts, and the recipe's defaults (:func:`recipe_lr`, :data:`DEFAULT_MODEL_OPTIONS`);
* :mod:`.schedule`: the learning rate of every step (:func:`lr_at`) and the data order
  of every epoch (:func:`epoch_order`, :func:`shard_positions`);
* :mod:`.batches`: the run's data in memory, and the batches of an epoch;
* :mod:`.setup`: seeding, the model built for the data, the optimizer, the precision;
* :mod:`.metrics`: running sums, epoch rows, where a run stands, the NaN/Ctrl-C vote;
* :mod:`.rundir`: the run directory: claiming it, checkpoints, every file a run writes;
* :mod:`.world`: the processes (``torchrun``), the device (:func:`resolve_device`),
  Ctrl-C;
* :mod:`.loop`: :func:`train`, :func:`~.loop.train_one_epoch`, :func:`~.loop.validate`.

Reliability: every file is written atomically; a run killed at any point resumes
(``resume=True``) to the same result on the CPU; Ctrl-C saves a checkpoint at the next
safe point.
"""

from .config import (
    DATASET_LR,
    DEFAULT_EVAL_BLUR,
    DEFAULT_LR,
    DEFAULT_MODEL_OPTIONS,
    DEVICES,
    OPTIMIZERS,
    SCHEDULES,
    TRAIN_SPLITS,
    TrainConfig,
    recipe_lr,
    train_argv,
    with_settings,
)
from .loop import train
from .rundir import (
    CHECKPOINT_FILE,
    CURVES_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    load_run_config,
    run_config,
)
from .schedule import epoch_order, lr_at, shard_positions
from .world import resolve_device

__all__ = [
    "TrainConfig",
    "train",
    "lr_at",
    "epoch_order",
    "shard_positions",
    "resolve_device",
    "load_run_config",
    "run_config",
    "with_settings",
    "train_argv",
    "SCHEDULES",
    "OPTIMIZERS",
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "CURVES_FILE",
    "DEFAULT_LR",
    "DATASET_LR",
    "recipe_lr",
    "DEFAULT_MODEL_OPTIONS",
    "DEFAULT_EVAL_BLUR",
    "DEVICES",
    "TRAIN_SPLITS",
]
