"""The training loop: :func:`train`, read top to bottom.

Set up (data, model, run directory, optimizer; or all of it restored from a
checkpoint), then per epoch

1. :func:`train_one_epoch`: one pass over the in-memory training tensors in the
   epoch's order (:func:`~hnets.training.epoch_order`: seeded with
   ``seed * 1000 + epoch``, so a resumed run sees what an uninterrupted one saw), the
   learning rate of every step from :func:`~hnets.training.lr_at`;
2. :func:`validate` (every ``valid_every`` epochs and after the last);
3. keep the best model by validation accuracy, save ``checkpoint.pt``, the model and
   a line of ``metrics.jsonl``.

After the last epoch the best model is reloaded from disk and scored once on the
whole test split; ``summary.json`` and ``curves.png`` are written.

Safe points: every few steps the processes vote (:func:`~hnets.training.metrics.vote`).
A loss that turned NaN or infinite stops the run with an
:class:`~hnets.errors.HNetsError` naming the epoch and step; Ctrl-C saves a checkpoint
and stops (a second Ctrl-C stops at once).

Distributed: under ``torchrun`` every process takes every ``world_size``-th sample of
the epoch's order (padded to equal length), gradients are averaged by
``DistributedDataParallel`` and metrics summed across processes; only rank 0 logs and
writes files. ``batch_size`` is per process.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import load_model
from ..data import rotate_images
from ..errors import HNetsError
from ..evaluation import evaluate
from ..models import count_parameters
from .batches import RunData, batches
from .config import TrainConfig
from .metrics import RunState, Sums, epoch_line, epoch_row, vote
from .rundir import RunDir, cpu_state, restore
from .schedule import epoch_order, lr_at, shard_positions
from .setup import amp_dtype, build_for, make_optimizer, seed_everything
from .world import StopFlag, World

__all__ = ["train", "train_one_epoch", "validate"]

_SYNC_EVERY = 10  # steps between votes on NaN and Ctrl-C (each vote waits for the device)


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
    world = World.start(config.device)
    try:
        finished = RunDir(Path(out_dir), config, world).finished_summary() if resume else None
        if finished is not None:  # nothing left to do: nothing read or written again
            summary = finished if world.is_main else {}
        else:
            summary = _train(
                _set_up(
                    config,
                    Path(out_dir),
                    world,
                    resume=resume,
                    overwrite=overwrite,
                    progress=progress,
                )
            )
        world.barrier()
        return summary
    finally:
        world.close()


def _train(run: _Run) -> dict[str, Any]:
    """The recipe: per epoch train, validate, keep the best and save; then test once."""
    config, world, state = run.config, run.world, run.state
    with StopFlag() as stop:
        for epoch in range(state.epoch, config.epochs):
            started = time.perf_counter()
            sums, lr = train_one_epoch(run, epoch, started, stop)
            train_stats = sums.reduced(world, started)
            due = (epoch + 1) % config.valid_every == 0 or epoch + 1 == config.epochs
            valid = validate(run.model, run.data, config, world) if due else None
            row = epoch_row(epoch, lr, train_stats, valid, started)
            # without a validation split every epoch improves (the last one is kept);
            # with one, only a validated epoch can
            improved = state.improves(valid) if due or run.data.valid is None else False
            state.end_epoch(row, cpu_state(run.model) if improved else None)
            if world.is_main:
                run.dir.save_checkpoint(
                    run.model, run.optimizer, run.scaler, state, run.steps_per_epoch
                )
                run.dir.save_epoch(run.model, run.data, state, improved)
                if run.progress:
                    tqdm.write(epoch_line(row, config.epochs), file=sys.stderr)
            if world.agree(stop.is_set):
                _stop(run, epoch + 1, 0)
    return _test_and_summarise(run)


@dataclass
class _Run:
    """A run, set up: what every epoch works with."""

    config: TrainConfig
    world: World
    dir: RunDir  # the run directory: every file the run reads and writes
    data: RunData
    model: nn.Module  # the plain model: its weights are what is saved
    net: nn.Module  # what the steps call: the model, compiled and/or in DDP
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    state: RunState
    images: torch.Tensor  # the training split, on the device unless loader workers index it
    labels: torch.Tensor
    positions: torch.Tensor  # this process's share of every epoch's order
    steps_per_epoch: int
    progress: bool  # a line per epoch
    bars: bool  # progress bars (on a terminal, on rank 0)


def _set_up(
    config: TrainConfig,
    out_dir: Path,
    world: World,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> _Run:
    """Data, model, run directory, optimizer; the saved state when resuming."""
    device = world.device
    # the data decides the model's input channels and classes; the model is built (and
    # bad options fail) before the run directory is touched
    data = RunData.load(config, progress=progress and world.is_main)
    seed_everything(config.seed)
    model = build_for(config, data).to(device)
    rundir = RunDir(out_dir, config, world)
    saved = rundir.claim(resume=resume, overwrite=overwrite)
    optimizer = make_optimizer(config, model)
    dtype = amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    state = RunState()
    if saved is not None:
        state = restore(saved, model, optimizer, scaler, rundir.checkpoint)
        if world.is_main:
            rundir.rewrite_outputs(data, state)
    net = _wrap(model, config, world)
    images, labels = data.train_tensors(device if config.num_workers == 0 else None)
    positions = shard_positions(labels.shape[0], world.rank, world.size)
    return _Run(
        config=config,
        world=world,
        dir=rundir,
        data=data,
        model=model,
        net=net,
        optimizer=optimizer,
        scaler=scaler,
        amp_dtype=dtype,
        state=state,
        images=images,
        labels=labels,
        positions=positions,
        steps_per_epoch=math.ceil(len(positions) / config.batch_size),
        progress=progress,
        bars=progress and world.is_main and sys.stderr.isatty(),
    )


def _wrap(model: nn.Module, config: TrainConfig, world: World) -> nn.Module:
    """The module the training steps call: ``model`` compiled and/or in DDP."""
    net: nn.Module = torch.compile(model) if config.compile else model
    if world.size > 1:
        device = world.device
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    return net


def train_one_epoch(run: _Run, epoch: int, started: float, stop: StopFlag) -> tuple[Sums, float]:
    """Train on this process's share of epoch ``epoch`` (from 0), from step ``run.state.step``.

    Every ``_SYNC_EVERY`` steps and after the last the processes vote: a NaN or
    infinite loss raises :class:`HNetsError`; Ctrl-C saves a mid-epoch checkpoint and
    raises ``KeyboardInterrupt``. ``started``: when the epoch started here.

    Returns:
        The running sums and the learning rate of the last step.
    """
    config, state, steps = run.config, run.state, run.steps_per_epoch
    order, angles = epoch_order(
        config.seed,
        epoch,
        run.labels.shape[0],
        augment=config.augment,
        quarter_turns=config.quarter_turns,
    )
    stream = batches(
        run.images,
        run.labels,
        order,
        angles,
        run.positions,
        config.batch_size,
        skip=state.step,
        num_workers=config.num_workers,
        device=run.world.device,
    )
    sums = Sums.resume(state.partial, run.world.device, run.world)
    bar = tqdm(
        total=steps,
        initial=state.step,
        disable=not run.bars,
        leave=False,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        file=sys.stderr,
    )
    run.net.train()
    recent: list[torch.Tensor] = []  # losses since the last vote
    lr = lr_at(config, epoch * steps + state.step, steps)  # reported if no step is left
    for step, (x, y, a) in enumerate(stream, start=state.step):
        lr = lr_at(config, epoch * steps + step, steps)
        loss, logits, y = _step(run, x, y, a, lr)
        sums.add(loss, logits, y)
        recent.append(loss)
        bar.update()
        if (step + 1) % _SYNC_EVERY == 0 or step + 1 == steps:
            bad_step, stop_now = vote(recent, step + 1 - len(recent), stop.is_set, run.world)
            recent = []
            if bad_step is not None:
                bar.close()
                raise HNetsError(_nan_message(run, epoch, bad_step))
            bar.set_postfix_str(sums.running())
            if stop_now and step + 1 < steps:  # mid-epoch; at its end the epoch is saved first
                bar.close()
                state.step, state.partial = step + 1, sums.reduced(run.world, started)
                if run.world.is_main:
                    run.dir.save_checkpoint(run.model, run.optimizer, run.scaler, state, steps)
                _stop(run, epoch, step + 1)
    bar.close()
    return sums, lr


def _step(
    run: _Run, x: torch.Tensor, y: torch.Tensor, angles: torch.Tensor | None, lr: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch (rotated by ``angles``); its loss, logits and labels."""
    device = run.world.device
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    if angles is not None:
        x = rotate_images(x, angles.to(device))
    with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        logits = run.net(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=run.config.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return loss.detach(), logits.detach(), y


def validate(
    model: nn.Module, data: RunData, config: TrainConfig, world: World
) -> dict[str, float] | None:
    """Validation loss and accuracy, each process scoring every ``world_size``-th image.

    ``None`` without a validation split (``train_split="train+valid"``).
    """
    if data.valid is None:
        return None
    images = data.valid.images[world.rank :: world.size]
    labels = data.valid.labels[world.rank :: world.size]
    if labels.shape[0]:
        local = evaluate(model, images, labels, batch_size=config.eval_batch_size)
        sums = [local["loss"] * local["n"], local["correct"], local["n"]]
    else:
        sums = [0.0, 0, 0]
    loss_sum, correct, n = world.sum(sums)
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": int(n)}


def _test_and_summarise(run: _Run) -> dict[str, Any]:
    """Score the best model once on the whole test split; write the summary and curves.

    With ``config.test`` false the test split is not opened and its figures are ``None``.
    """
    if not run.world.is_main:
        return {}
    started = time.perf_counter()
    best = load_model(run.dir.path, run.world.device)
    test: dict[str, Any] = {"accuracy": None, "error": None, "n": None}
    if run.config.test:
        test_set = run.data.test_split(run.config.limit_eval)
        batch_size = run.config.eval_batch_size
        test = evaluate(best, test_set.images, test_set.labels, batch_size=batch_size)
    eval_seconds = time.perf_counter() - started
    return run.dir.write_summary(
        run.data,
        run.state,
        test,
        parameters=count_parameters(best),
        eval_seconds=eval_seconds,
        amp_dtype=run.amp_dtype,
    )


def _nan_message(run: _Run, epoch: int, step: int) -> str:
    kept = (
        f"the last good checkpoint (epoch {run.state.epoch}) is {run.dir.checkpoint}"
        if run.state.epoch
        else "no checkpoint was saved yet"
    )
    return (
        f"the training loss became NaN or infinite at epoch {epoch + 1}, step {step + 1} "
        f"of {run.steps_per_epoch}; training stopped ({kept}); try a lower --lr"
    )


def _stop(run: _Run, epoch: int, step: int) -> NoReturn:
    """Stop after Ctrl-C, the checkpoint saved after ``step`` steps of epoch ``epoch`` (from 0)."""
    if run.world.is_main:
        where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
        print(
            f"hnets: stopped at {where}; checkpoint saved to {run.dir.checkpoint}; "
            "continue with --resume",
            file=sys.stderr,
        )
    raise KeyboardInterrupt
