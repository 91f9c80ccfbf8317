"""When the run sees what: the learning rate of every step, and the data order of every epoch.

Both are pure functions of the settings and the position in the run (step, epoch), with
no state to save: a resumed run recomputes exactly what an uninterrupted one used.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["lr_at", "epoch_order", "shard_positions"]

_ONECYCLE_WARM = 0.3  # share of the steps spent rising, as torch's OneCycleLR


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
    seed: int, epoch: int, n: int, *, augment: bool, quarter_turns: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The epoch's sample order and (with ``augment``) one rotation angle per position.

    Both come from a generator seeded with ``seed * 1000 + epoch``: the data stream
    of an epoch depends on nothing else (not on the batch size, the number of
    processes, or whether the run was resumed). ``quarter_turns = q > 0``: a fraction
    ``q`` of the positions (drawn after the angles, so ``q = 0`` leaves the stream as it
    always was) get an exact multiple of 90 degrees instead, which resamples nothing.

    Returns:
        ``order`` int64 ``(n,)``, a permutation; ``angles`` float32 ``(n,)`` radians in
        ``[0, 2 pi)`` (the angle of position ``i`` rotates sample ``order[i]``) or ``None``.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=generator)
    if not augment:
        return order, None
    angles = torch.rand(n, generator=generator) * (2 * math.pi)
    if quarter_turns > 0:
        pick = torch.rand(n, generator=generator) < quarter_turns
        turns = torch.randint(0, 4, (n,), generator=generator).float() * (math.pi / 2)
        angles = torch.where(pick, turns, angles)
    return order, angles


def shard_positions(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Positions of the epoch's order that process ``rank`` trains on.

    Every ``world_size``-th position starting at ``rank``, after padding the order
    (by wrapping around) to a multiple of ``world_size``, as ``DistributedSampler`` does.
    """
    per_rank = math.ceil(n / world_size)
    return (torch.arange(per_rank * world_size) % n)[rank::world_size]


def _cosine_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
