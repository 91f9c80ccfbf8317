"""Training on Rot-MNIST: one loop to read top to bottom, checkpoints, resume, DDP.

:func:`train` is the whole story. Per epoch it

1. draws the epoch's order and augmentation angles from a generator seeded with
   ``seed * 1000 + epoch`` (so the data stream depends only on the seed and the
   epoch, never on history: a resumed run sees what an uninterrupted one saw);
2. runs one pass over the in-memory training tensors in batches (no per-sample
   ``__getitem__``; a ``DataLoader`` only when ``num_workers > 0``), setting the
   learning rate of every step from :func:`lr_at`;
3. validates, keeps the best model by validation accuracy (written at once with
   :func:`hnets.save_model`), saves ``checkpoint.pt`` and appends a line to
   ``metrics.jsonl``.

After the last epoch the best model is reloaded from disk and scored once on the
whole test split; ``summary.json`` and ``curves.png`` are written.

Reliability: every file is written atomically; the checkpoint holds model,
optimizer, AMP scaler, schedule position, epoch, best metric, RNG states and the
configuration, so a run killed at any point resumes (``resume=True``) to the same
result on the CPU. Ctrl-C saves a checkpoint at the next safe point (a second
Ctrl-C stops at once). A loss that turns NaN or infinite stops the run with an
:class:`~hnets.errors.HNetsError` naming the epoch and step.

Distributed: under ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) every
process takes every ``world_size``-th sample of the epoch's order (padded to equal
length), gradients are averaged by ``DistributedDataParallel`` and metrics summed
across processes; only rank 0 logs and writes files. ``batch_size`` is per process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._io import append_line, atomic_write, write_json
from .checkpoint import (
    load_model,
    load_training_state,
    rng_state,
    save_model,
    save_training_state,
    set_rng_state,
    unwrap_model,
    update_model_extra,
)
from .data import ImageDataset, ensure_dataset, rotate_images
from .data.registry import DATASETS, get_dataset, is_folder
from .data.subsets import stratified_subset
from .errors import CheckpointError, HNetsError
from .evaluation import evaluate, plot_curves
from .models import build_model, count_parameters, model_names
from .nn import HConv2d

__all__ = [
    "TrainConfig",
    "train",
    "lr_at",
    "epoch_order",
    "shard_positions",
    "resolve_device",
    "load_run_config",
    "SCHEDULES",
    "OPTIMIZERS",
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "CURVES_FILE",
]

SCHEDULES = ("cosine", "onecycle", "step", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd")
DEVICES = ("auto", "cpu", "cuda", "mps")
TRAIN_SPLITS = ("train", "train+valid")
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"
#: Files whose presence means a directory holds a run.
_RUN_FILES = ("config.json", METRICS_FILE, CHECKPOINT_FILE, SUMMARY_FILE)
#: Everything a run writes (removed by ``overwrite``).
_OUTPUT_FILES = (*_RUN_FILES, "model.safetensors", CURVES_FILE, "confusion.png")
#: Settings that say where and how a run executes, not what it computes: they may
#: change when a run is resumed.
_RUNTIME_FIELDS = frozenset(
    {"device", "data_dir", "num_workers", "eval_batch_size", "compile", "test"}
)
_SGD_MOMENTUM = 0.9
_ONECYCLE_WARM = 0.3  # share of the steps spent rising, as torch's OneCycleLR
_SYNC_EVERY = 10  # steps between checks for NaN and Ctrl-C (each check waits for the device)
_NO_STEP = 2.0**40


#: Peak learning rate of the recipe, per model (chosen on validation error: see the README).
DEFAULT_LR = {"hnet": 5e-3, "cnn": 1e-2}
#: Model options of the recipe, per model: widths that spend the 35k-parameter budget
#: about equally (H-Net 32,482 parameters, CNN 32,100; chosen on validation error).
#: Options given explicitly win; the model classes' own defaults are unchanged.
DEFAULT_MODEL_OPTIONS: dict[str, dict[str, Any]] = {"hnet": {"width": 1.2}, "cnn": {"width": 1.15}}


@dataclass
class TrainConfig:
    """A training run's settings: plain, JSON-serialisable data (the recipe's defaults here).

    Attributes:
        model: ``"hnet"`` or ``"cnn"``; ``model_options`` go to :func:`hnets.build_model`
            (``width``, ``max_order``, ...) on top of the recipe's
            :data:`DEFAULT_MODEL_OPTIONS` for that model.
        epochs, batch_size (per process), lr (peak; ``None`` takes the model's recipe
            value from :data:`DEFAULT_LR`), weight_decay: the usual.
        schedule: ``cosine`` (linear warmup over ``warmup_epochs``, then cosine to 0),
            ``onecycle`` (cosine up from ``lr/25`` over 30% of the steps, then down to
            ``lr/25e4``), ``step`` (x0.1 at 1/2 and 3/4 of the epochs) or ``constant``;
            every schedule but ``onecycle`` starts with the linear warmup.
        optimizer: ``adamw``, ``adam`` or ``sgd`` (Nesterov momentum 0.9). Weight decay
            applies to convolution and linear weights only.
        label_smoothing: of the training loss (validation and test losses have none).
        augment: rotate every training image by a random angle in ``[0, 2 pi)``.
        train_split: ``train`` (validate every epoch, keep the best epoch's model)
            or ``train+valid`` (no validation: keep the last epoch's model).
        seed: seeds initialisation, data order and augmentation.
        device: ``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda`` or ``mps``.
        amp: mixed precision on CUDA (bfloat16 where supported, else float16 with a
            gradient scaler); ignored elsewhere.
        compile: ``torch.compile`` the model for training.
        dataset: ``rotmnist``, ``rotfashion`` or ``folder:PATH`` (the user's images,
            see :mod:`hnets.data.folder`); the model is built for its channels and
            classes.
        data_dir, data_variant: where the data is and which variant (``None``: the
            dataset's default, for Rot-MNIST the original if prepared, else the
            stand-in; see :func:`hnets.data.ensure_dataset`).
        image_size, channels, skip_bad: how a ``folder:PATH`` dataset is prepared
            (``None``: its defaults); unused for the other datasets.
        limit_train, limit_eval: use only the first N samples (training; validation and
            test), for quick runs.
        train_size: train on a seeded (``seed``), stratified subset of this many
            samples of the training split (:func:`hnets.data.subsets.stratified_subset`),
            for sample-efficiency studies; ``None``: all of it.
        eval_batch_size, num_workers: evaluation batch size; ``DataLoader`` workers
            (0: index the in-memory tensors directly, the fastest for this data).
        test: score the final model on the test split at the end. ``False`` for recipe
            sweeps, which must be chosen on validation error with the test set unread;
            ``summary.json`` then has ``null`` test figures.
    """

    model: str = "hnet"
    model_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 90
    batch_size: int = 64
    lr: float | None = None  # None: the model's recipe value, DEFAULT_LR
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    augment: bool = True
    train_split: str = "train+valid"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    dataset: str = "rotmnist"
    data_dir: str | None = None
    data_variant: str | None = None
    image_size: int | None = None
    channels: int | None = None
    skip_bad: bool = False
    limit_train: int | None = None
    train_size: int | None = None
    limit_eval: int | None = None
    eval_batch_size: int = 500
    num_workers: int = 0
    test: bool = True

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
        return cls(**dict(data)).check()

    def check(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first bad setting; return ``self``."""
        if self.model not in model_names():
            raise ValueError(
                f"unknown model {self.model!r}; choose one of {', '.join(model_names())}"
            )
        if not isinstance(self.model_options, dict):
            raise ValueError("model_options must be a dict")
        self.model_options = {**DEFAULT_MODEL_OPTIONS.get(self.model, {}), **self.model_options}
        for name, low in (
            ("epochs", 1),
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
        if self.lr is None:
            self.lr = DEFAULT_LR[self.model]
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_epochs < math.inf:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
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

    def _check_data(self) -> None:
        if not isinstance(self.dataset, str):
            raise ValueError(f"dataset must be a name, got {self.dataset!r}")
        if is_folder(self.dataset):
            if self.data_variant not in (None, "folder"):
                raise ValueError(f"a folder dataset has no variant {self.data_variant!r}")
        else:
            if self.dataset not in DATASETS:
                get_dataset(self.dataset)  # DataError listing the known names
            allowed = (None, *DATASETS[self.dataset].variants)
            if self.data_variant not in allowed:
                raise ValueError(
                    f"data_variant must be one of {allowed} for {self.dataset}, "
                    f"got {self.data_variant!r}"
                )
            if self.image_size is not None or self.channels is not None or self.skip_bad:
                raise ValueError("image_size, channels and skip_bad are for folder:PATH datasets")


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model as ``config`` says, writing everything into ``out_dir``.

    Args:
        config: the run's settings.
        out_dir: the run directory. It receives ``model.safetensors`` and
            ``config.json`` (the best model so far), ``checkpoint.pt``,
            ``metrics.jsonl``, and at the end ``summary.json`` and ``curves.png``.
        resume: continue the run in ``out_dir`` from ``checkpoint.pt`` (the same
            settings are required, except that ``epochs`` may grow and where-to-run
            settings such as ``device`` may change). Without a run there, start one.
        overwrite: delete the run in ``out_dir`` and start afresh.
        progress: progress bars (on a terminal) and one line per epoch on stderr.

    Returns:
        The summary (also written to ``summary.json``); ``{}`` on ranks other than 0.

    Raises:
        HNetsError: ``out_dir`` holds another run (and neither ``resume`` nor
            ``overwrite``), the saved run has other settings, the loss became NaN,
            a file cannot be written, or the data is missing.
        KeyboardInterrupt: after Ctrl-C, once the checkpoint is saved.
    """
    config.check()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    out_dir = Path(out_dir)
    world = _World.start(config.device)
    try:
        summary = _train(
            config, out_dir, world, resume=resume, overwrite=overwrite, progress=progress
        )
        world.barrier()
        return summary
    finally:
        world.close()


def _train(
    config: TrainConfig,
    out_dir: Path,
    world: _World,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> dict[str, Any]:
    device = world.device
    # -- data (it decides the model's input channels and classes), model (bad options
    #    fail before the run directory is touched), optimizer --
    data = _Data.load(config, world, progress)
    _seed_everything(config.seed)
    model = _build(config, data).to(device)
    saved = _claim_out_dir(out_dir, config, world, resume=resume, overwrite=overwrite)
    optimizer = _make_optimizer(config, model)
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    run = _RunState()
    if saved is not None:
        run = _restore(saved, model, optimizer, scaler, out_dir / CHECKPOINT_FILE)
        if world.is_main:
            _rewrite_outputs(out_dir, config, data, run)
    net: nn.Module = torch.compile(model) if config.compile else model
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )

    images, labels = data.train_tensors(device if config.num_workers == 0 else None)
    n_train = labels.shape[0]
    positions = shard_positions(n_train, world.rank, world.size)
    steps_per_epoch = math.ceil(len(positions) / config.batch_size)
    bars = progress and world.is_main and sys.stderr.isatty()

    with _StopFlag() as stop:
        for epoch in range(run.epoch, config.epochs):
            started = time.perf_counter()
            order, angles = epoch_order(config.seed, epoch, n_train, augment=config.augment)
            batches = _batches(
                images,
                labels,
                order,
                angles,
                positions,
                config.batch_size,
                skip=run.step,
                num_workers=config.num_workers,
                device=device,
            )
            sums = _Sums.resume(run.partial, device, world)
            bar = tqdm(
                total=steps_per_epoch,
                initial=run.step,
                disable=not bars,
                leave=False,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                file=sys.stderr,
            )
            net.train()
            recent: list[torch.Tensor] = []
            lr = lr_at(config, epoch * steps_per_epoch + run.step, steps_per_epoch)
            for step, (x, y, a) in enumerate(batches, start=run.step):
                lr = lr_at(config, epoch * steps_per_epoch + step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if a is not None:
                    x = rotate_images(x, a.to(device))
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                sums.add(loss.detach(), logits.detach(), y)
                recent.append(loss.detach())
                bar.update()

                if (step + 1) % _SYNC_EVERY == 0 or step + 1 == steps_per_epoch:
                    bad_step, interrupted = _check(recent, step + 1 - len(recent), stop, world)
                    recent = []
                    if bad_step is not None:
                        bar.close()
                        raise HNetsError(
                            _nan_message(out_dir, epoch, bad_step, steps_per_epoch, run)
                        )
                    bar.set_postfix_str(sums.running())
                    if interrupted and step + 1 < steps_per_epoch:  # stop mid-epoch
                        bar.close()
                        run.step = step + 1
                        run.partial = sums.reduced(world, started)
                        if world.is_main:
                            _save_checkpoint(
                                out_dir,
                                config,
                                model,
                                optimizer,
                                scaler,
                                run,
                                world,
                                steps_per_epoch,
                            )
                        raise _interrupted(out_dir, epoch, run.step, world)
            bar.close()

            # -- end of epoch: validate, keep the best, checkpoint, log ------------------
            train_stats = sums.reduced(world, started)
            valid = _validate(model, data, config, world) if data.valid is not None else None
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": train_stats["loss_sum"] / train_stats["count"],
                "train_acc": train_stats["correct"] / train_stats["count"],
                "valid_loss": valid["loss"] if valid else None,
                "valid_acc": valid["accuracy"] if valid else None,
                "train_n": train_stats["count"],
                "train_seconds": train_stats["train_seconds"],
                "seconds": time.perf_counter() - started + train_stats["earlier_seconds"],
                "images_per_s": train_stats["count"] / max(train_stats["train_seconds"], 1e-9),
            }
            improved = (
                valid is None
                or run.best is None
                or (
                    (valid["accuracy"], -valid["loss"])
                    > (run.best["valid_acc"], -run.best["valid_loss"])
                )
            )
            if improved:
                run.best = {
                    "epoch": epoch + 1,
                    "valid_acc": row["valid_acc"],
                    "valid_loss": row["valid_loss"],
                }
                run.best_state = _cpu_state(model)
            run.history.append(row)
            run.epoch, run.step, run.partial = epoch + 1, 0, None
            if world.is_main:
                _save_checkpoint(
                    out_dir, config, model, optimizer, scaler, run, world, steps_per_epoch
                )
                if improved:
                    save_model(model, out_dir, extra=_model_extra(config, data, run))
                append_line(out_dir / METRICS_FILE, json.dumps(row, sort_keys=True))
                if progress:
                    tqdm.write(_epoch_line(row, config.epochs), file=sys.stderr)
            if world.agree(stop.is_set):
                raise _interrupted(out_dir, epoch + 1, 0, world)

    return _finish(config, out_dir, data, run, world, amp_dtype)


# -- schedule, data order, devices -----------------------------------------------------


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global step ``step`` (counted from 0) under ``config.schedule``."""
    total = max(1, config.epochs * steps_per_epoch)
    peak = config.lr
    if config.schedule == "onecycle":
        rise = max(1, round(_ONECYCLE_WARM * total))
        if step < rise:
            return _cosine_between(peak / 25, peak, step / rise)
        return _cosine_between(peak, peak / 25e4, min(1.0, (step - rise) / max(1, total - rise)))
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return peak * (step + 1) / warmup
    if config.schedule == "constant":
        return peak
    if config.schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        drops = sum(epoch >= math.ceil(share * config.epochs) for share in (0.5, 0.75))
        return peak * 0.1**drops
    return _cosine_between(peak, 0.0, min(1.0, (step - warmup) / max(1, total - warmup)))


def epoch_order(
    seed: int, epoch: int, n: int, *, augment: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The epoch's sample order and (with ``augment``) one rotation angle per position.

    Both come from a generator seeded with ``seed * 1000 + epoch``: the data stream
    of an epoch depends on nothing else (not on the batch size, the number of
    processes, or whether the run was resumed).

    Returns:
        ``order`` int64 ``(n,)``, a permutation; ``angles`` float32 ``(n,)`` radians in
        ``[0, 2 pi)`` (the angle of position ``i`` rotates sample ``order[i]``) or ``None``.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=generator)
    angles = torch.rand(n, generator=generator) * (2 * math.pi) if augment else None
    return order, angles


def shard_positions(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Positions of the epoch's order that process ``rank`` trains on.

    Every ``world_size``-th position starting at ``rank``, after padding the order
    (by wrapping around) to a multiple of ``world_size``, as ``DistributedSampler`` does.
    """
    per_rank = math.ceil(n / world_size)
    return (torch.arange(per_rank * world_size) % n)[rank::world_size]


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU; other names are checked."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HNetsError(f"device {name!r} asked for, but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise HNetsError(f"device {name!r} asked for, but MPS is not available")
    return device


def load_run_config(out_dir: str | os.PathLike[str]) -> TrainConfig:
    """The settings of the run saved in ``out_dir/checkpoint.pt``."""
    path = Path(out_dir) / CHECKPOINT_FILE
    return _saved_config(load_training_state(path), path)


def _cosine_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not config.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay = [m.weight for m in model.modules() if isinstance(m, (HConv2d, nn.Conv2d, nn.Linear))]
    decay_ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in decay_ids]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=_SGD_MOMENTUM, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- data ---------------------------------------------------------------------------


@dataclass
class _Data:
    """The prepared variant and the in-memory training and validation splits."""

    vdir: Path
    variant: str
    train: ImageDataset
    valid: ImageDataset | None

    @classmethod
    def load(cls, config: TrainConfig, world: _World, progress: bool) -> _Data:
        folder = (
            {"image_size": config.image_size, "channels": config.channels}
            | {"skip_bad": config.skip_bad}
            if is_folder(config.dataset)
            else {}
        )
        vdir = ensure_dataset(
            config.data_dir,
            config.data_variant,
            dataset=config.dataset,
            progress=progress and world.is_main,
            **folder,
        )
        train = ImageDataset(vdir, config.train_split, limit=config.limit_train)
        if config.train_size is not None:
            chosen = stratified_subset(train.labels.numpy(), config.train_size, config.seed)
            train = train.subset(chosen)
        valid = (
            ImageDataset(vdir, "valid", limit=config.limit_eval)
            if config.train_split == "train"
            else None
        )
        return cls(vdir, train.variant, train, valid)

    def description(self) -> dict[str, Any]:
        """What a checkpoint and a summary record of the data."""
        return {
            "dataset": self.train.name,
            "title": self.train.title,
            "classes": list(self.train.classes),
            "image_shape": list(self.train.images.shape[1:]),
            "variant": self.variant,
            "standin": self.train.standin,
        }

    def train_tensors(self, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images and labels, moved to ``device`` once (``None``: kept on the CPU)."""
        if device is None:
            return self.train.images, self.train.labels
        return self.train.images.to(device), self.train.labels.to(device)


def _build(config: TrainConfig, data: _Data) -> nn.Module:
    """The model of ``config`` for ``data``'s input channels and number of classes.

    The two enter the model's options only where they differ from the defaults
    (one channel, ten classes), so Rot-MNIST checkpoints read as they always did.
    """
    shape = {"in_channels": data.train.channels, "n_classes": len(data.train.classes)}
    options = {k: v for k, v in shape.items() if v != {"in_channels": 1, "n_classes": 10}[k]}
    options |= config.model_options
    try:
        return build_model(config.model, **options)
    except ValueError as exc:
        raise ValueError(f"model {config.model!r} with {options}: {exc}") from None


def _batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    angles: torch.Tensor | None,
    positions: torch.Tensor,
    batch_size: int,
    *,
    skip: int,
    num_workers: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``(images, labels, angles)`` batches of the given positions, after ``skip`` batches."""
    chunks = list(positions.split(batch_size))[skip:]
    if num_workers == 0:
        index_device = images.device
        for pos in chunks:
            index = order[pos].to(index_device)
            yield images[index], labels[index], None if angles is None else angles[pos]
        return
    loader = torch.utils.data.DataLoader(
        _BatchList(images, labels, order, angles, chunks),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    yield from loader


class _BatchList(torch.utils.data.Dataset):
    """Whole batches as items, for ``DataLoader`` workers (``num_workers > 0``)."""

    def __init__(self, images, labels, order, angles, chunks) -> None:  # noqa: ANN001
        self.images, self.labels, self.order, self.angles, self.chunks = (
            images,
            labels,
            order,
            angles,
            chunks,
        )

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        pos = self.chunks[i]
        index = self.order[pos]
        return (
            self.images[index],
            self.labels[index],
            None if self.angles is None else self.angles[pos],
        )


def _validate(
    model: nn.Module, data: _Data, config: TrainConfig, world: _World
) -> dict[str, float]:
    """Validation loss and accuracy, each process scoring every ``world_size``-th image."""
    images = data.valid.images[world.rank :: world.size]
    labels = data.valid.labels[world.rank :: world.size]
    if labels.shape[0]:
        local = evaluate(model, images, labels, batch_size=config.eval_batch_size)
        sums = [local["loss"] * local["n"], local["correct"], local["n"]]
    else:
        sums = [0.0, 0, 0]
    loss_sum, correct, n = world.sum(sums)
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": int(n)}


# -- per-epoch bookkeeping ------------------------------------------------------------


class _Sums:
    """Running sums of the training loss and correct predictions, kept on the device."""

    def __init__(
        self,
        device: torch.device,
        loss_sum: float = 0.0,
        correct: int = 0,
        count: int = 0,
        train_seconds: float = 0.0,
        earlier_seconds: float = 0.0,
    ) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.loss_sum = torch.tensor(loss_sum, dtype=dtype, device=device)
        self.correct = torch.tensor(correct, dtype=torch.long, device=device)
        self.count = count
        self.earlier_train_seconds = train_seconds
        self.earlier_seconds = earlier_seconds
        self.started = time.perf_counter()

    @classmethod
    def resume(
        cls, partial: Mapping[str, Any] | None, device: torch.device, world: _World
    ) -> _Sums:
        """Fresh sums, or those of an interrupted epoch (held by rank 0 alone)."""
        if not partial or not world.is_main:
            return cls(device)
        return cls(
            device,
            partial["loss_sum"],
            partial["correct"],
            partial["count"],
            partial["train_seconds"],
            partial["seconds"],
        )

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        self.loss_sum += loss.to(self.loss_sum.dtype) * n
        self.correct += (logits.argmax(dim=1) == y).sum()
        self.count += n

    def running(self) -> str:
        if not self.count:
            return ""
        return (
            f"loss {self.loss_sum.item() / self.count:.4f} "
            f"acc {self.correct.item() / self.count:.2%}"
        )

    def reduced(self, world: _World, epoch_started: float) -> dict[str, Any]:
        """Sums over all processes, plus the time spent so far (plain numbers)."""
        train_seconds = self.earlier_train_seconds + time.perf_counter() - self.started
        loss_sum, correct, count = world.sum(
            [self.loss_sum.item(), self.correct.item(), self.count]
        )
        return {
            "loss_sum": float(loss_sum),
            "correct": int(correct),
            "count": int(count),
            "train_seconds": train_seconds,
            "earlier_seconds": self.earlier_seconds,
            "seconds": self.earlier_seconds + time.perf_counter() - epoch_started,
        }


@dataclass
class _RunState:
    """Where a run stands: what a checkpoint saves besides model and optimizer."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed in epoch ``epoch`` (non-zero after Ctrl-C)
    partial: dict[str, Any] | None = None  # sums of the interrupted epoch
    best: dict[str, Any] | None = None  # {"epoch", "valid_acc", "valid_loss"}
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _check(
    recent: list[torch.Tensor], first_step: int, stop: _StopFlag, world: _World
) -> tuple[int | None, bool]:
    """(first step with a non-finite loss on any process or None, Ctrl-C seen by any process)."""
    finite = torch.isfinite(torch.stack(recent).float()).cpu()
    bad = (~finite).nonzero()
    first_bad = first_step + int(bad[0]) if len(bad) else None
    flags = torch.tensor(
        [-(first_bad if first_bad is not None else _NO_STEP), float(stop.is_set)],
        dtype=torch.float64,
    )
    flags = world.max(flags)
    step = -float(flags[0])
    return (int(step) if step < _NO_STEP else None), bool(flags[1])


def _nan_message(out_dir: Path, epoch: int, step: int, steps: int, run: _RunState) -> str:
    kept = (
        f"the last good checkpoint (epoch {run.epoch}) is {out_dir / CHECKPOINT_FILE}"
        if run.epoch
        else "no checkpoint was saved yet"
    )
    return (
        f"the training loss became NaN or infinite at epoch {epoch + 1}, step {step + 1} "
        f"of {steps}; training stopped ({kept}); try a lower --lr"
    )


def _interrupted(out_dir: Path, epoch: int, step: int, world: _World) -> KeyboardInterrupt:
    if world.is_main:
        where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
        print(
            f"hnets: stopped at {where}; checkpoint saved to {out_dir / CHECKPOINT_FILE}; "
            "continue with --resume",
            file=sys.stderr,
        )
    return KeyboardInterrupt()


def _epoch_line(row: Mapping[str, Any], epochs: int) -> str:
    line = (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.2%}"
    )
    if row["valid_acc"] is not None:
        line += f"  valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.2%}"
    return line + f"  lr {row['lr']:.2e}  {row['seconds']:.1f} s  {row['images_per_s']:.0f} img/s"


# -- the output directory, checkpoints and the final report ----------------------------


def _claim_out_dir(
    out_dir: Path, config: TrainConfig, world: _World, *, resume: bool, overwrite: bool
) -> dict[str, Any] | None:
    """Refuse, resume or clear ``out_dir``; return the training state to resume from."""
    if out_dir.exists() and not out_dir.is_dir():
        raise HNetsError(f"{out_dir} exists and is not a directory")
    found = [name for name in _RUN_FILES if (out_dir / name).exists()]
    saved = None
    if found and resume:
        path = out_dir / CHECKPOINT_FILE
        if not path.exists():
            raise HNetsError(
                f"{out_dir} holds a run ({', '.join(found)}) but no {CHECKPOINT_FILE} "
                "to resume from; use --overwrite to start again"
            )
        saved = load_training_state(path)
        _check_resumable(_saved_config(saved, path), config, path)
        if saved.get("step_in_epoch") and saved.get("world_size") != world.size:
            raise HNetsError(
                f"{path} was saved mid-epoch by {saved.get('world_size')} processes; "
                f"resume it with as many (not {world.size})"
            )
    elif found and not overwrite:
        raise HNetsError(
            f"{out_dir} already holds a run ({', '.join(found)}): use --resume to "
            "continue it, --overwrite to replace it, or another --out"
        )
    world.barrier()  # every process has looked before rank 0 changes anything
    if world.is_main:
        if found and overwrite:
            for name in _OUTPUT_FILES:
                (out_dir / name).unlink(missing_ok=True)
        _check_writable(out_dir)
    return saved


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise HNetsError(f"cannot write into {out_dir}: {exc.strerror or exc}") from None


def _saved_config(saved: Mapping[str, Any], path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(saved["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad training settings ({exc})") from None


def _check_resumable(saved: TrainConfig, config: TrainConfig, path: Path) -> None:
    differences = []
    for f in dataclasses.fields(TrainConfig):
        before, now = getattr(saved, f.name), getattr(config, f.name)
        if f.name in _RUNTIME_FIELDS or before == now:
            continue
        if f.name == "epochs" and now > before:
            continue  # extending a run is allowed
        differences.append(f"{f.name} {before!r} -> {now!r}")
    if differences:
        raise HNetsError(
            f"cannot resume {path}: the settings differ ({'; '.join(differences)}); "
            "use the saved settings, or --overwrite to start again"
        )


def _restore(
    saved: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    path: Path,
) -> _RunState:
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scaler.is_enabled() and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        return _RunState(
            epoch=int(saved["epoch"]),
            step=int(saved["step_in_epoch"]),
            partial=dict(saved["partial"]) or None,
            best=dict(saved["best"]) or None,
            best_state=dict(saved["best_model"]) or None,
            history=list(saved["history"]),
        )
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} does not fit this run ({reason[:200]})") from None


def _rewrite_outputs(out_dir: Path, config: TrainConfig, data: _Data, run: _RunState) -> None:
    """Make ``metrics.jsonl`` and the saved model agree with the checkpoint being resumed.

    A run killed after its checkpoint but before the next one may have written an
    epoch's metrics line, or a better model, that the resumed run will redo.
    """
    with atomic_write(out_dir / METRICS_FILE, "w") as fh:
        fh.writelines(json.dumps(row, sort_keys=True) + "\n" for row in run.history)
    if run.best_state is not None:
        best = _build(config, data)
        best.load_state_dict(run.best_state)
        save_model(best, out_dir, extra=_model_extra(config, data, run))


def _save_checkpoint(
    out_dir: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    run: _RunState,
    world: _World,
    steps_per_epoch: int,
) -> None:
    save_training_state(
        out_dir / CHECKPOINT_FILE,
        {
            "config": config.to_dict(),
            "epoch": run.epoch,
            "step_in_epoch": run.step,
            "partial": run.partial or {},
            "world_size": world.size,
            "model": _cpu_state(model),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            # the schedule is a pure function of the step (lr_at): its state is the step
            "scheduler": {
                "schedule": config.schedule,
                "steps_per_epoch": steps_per_epoch,
                "step": run.epoch * steps_per_epoch + run.step,
            },
            "best": run.best or {},
            "best_model": run.best_state or {},
            "history": run.history,
            "rng": rng_state(),
            "versions": _versions(),
        },
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()}


def _model_extra(config: TrainConfig, data: _Data, run: _RunState) -> dict[str, Any]:
    best = run.best or {}
    return {
        "epoch": best.get("epoch"),
        "valid_accuracy": best.get("valid_acc"),
        "valid_loss": best.get("valid_loss"),
        "data_variant": data.variant,
        "standin": data.train.standin,
        **{k: v for k, v in data.description().items() if k not in ("variant", "standin")},
        "train_config": config.to_dict(),
    }


def _finish(
    config: TrainConfig,
    out_dir: Path,
    data: _Data,
    run: _RunState,
    world: _World,
    amp_dtype: torch.dtype | None,
) -> dict[str, Any]:
    """Score the best model once on the whole test split; write the summary and curves.

    With ``config.test`` false the test split is not opened and its figures are ``None``.
    """
    if not world.is_main:
        return {}
    started = time.perf_counter()
    best = load_model(out_dir, world.device)
    test: dict[str, Any] = {"accuracy": None, "error": None, "n": None}
    if config.test:
        test_set = ImageDataset(data.vdir, "test", limit=config.limit_eval)
        test = evaluate(best, test_set.images, test_set.labels, batch_size=config.eval_batch_size)
    eval_seconds = time.perf_counter() - started
    train_seconds = sum(row["train_seconds"] for row in run.history)
    summary = {
        "test_accuracy": test["accuracy"],
        "test_error": test["error"],
        "test_n": test["n"],
        "test": test,
        "best_epoch": run.best["epoch"],
        "valid_accuracy": run.best["valid_acc"],
        "valid_loss": run.best["valid_loss"],
        "epochs": len(run.history),
        "parameters": count_parameters(best),
        "wall_seconds": sum(row["seconds"] for row in run.history) + eval_seconds,
        "train_images_per_s": sum(row["train_n"] for row in run.history) / max(train_seconds, 1e-9),
        "device": str(world.device),
        "world_size": world.size,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        "seed": config.seed,
        "versions": _versions(),
        "data": {
            **data.description(),
            "dir": str(data.vdir),
            "train_n": len(data.train),
            "valid_n": len(data.valid) if data.valid is not None else 0,
            "test_n": test["n"],
        },
        "config": config.to_dict(),
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    plot_curves(run.history, out_dir / CURVES_FILE)
    if config.test:
        update_model_extra(
            out_dir,
            {"test_accuracy": test["accuracy"], "test_error": test["error"], "test_n": test["n"]},
        )
    return summary


def _versions() -> dict[str, str]:
    from . import __version__

    return {
        "hnets": __version__,
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# -- processes: distributed set-up and Ctrl-C -----------------------------------------------


@dataclass
class _World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    device: torch.device
    rank: int = 0
    size: int = 1
    owns_group: bool = False

    @classmethod
    def start(cls, device_name: str) -> _World:
        """Join the process group that ``torchrun`` describes in the environment, if any."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        device = resolve_device(device_name)
        if size <= 1 and not dist.is_initialized():
            return cls(device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        elif device.type != "cpu":
            raise HNetsError(f"distributed training runs on CUDA or the CPU, not {device.type}")
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(device, dist.get_rank(), dist.get_world_size(), owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum over all processes (a CPU tensor in and out)."""
        if self.size == 1:
            return values
        t = values.to(self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.cpu()

    def agree(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any."""
        return bool(self.max(torch.tensor([float(flag)], dtype=torch.float64))[0])

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class _StopFlag:
    """Turns the first Ctrl-C (SIGINT) into a flag the loop checks at safe points.

    A second Ctrl-C raises ``KeyboardInterrupt`` at once. Outside the main thread
    (where signals cannot be caught) Ctrl-C keeps its usual behaviour.
    """

    def __init__(self) -> None:
        self.is_set = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.is_set:
            raise KeyboardInterrupt
        self.is_set = True
        print(
            "hnets: Ctrl-C: saving a checkpoint at the next safe point "
            "(press Ctrl-C again to stop at once)",
            file=sys.stderr,
        )
