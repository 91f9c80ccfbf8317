"""One interleaved timer, for ``hnets bench`` (:mod:`hnets.bench`) and ``hnets tune``
(:mod:`hnets.tune`).

Candidates are called in rounds, A, B, C, A, B, C, ...: a slow moment of the machine
then hits all of them alike, and each candidate's median over its samples is compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["interleaved", "synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for the GPU: its kernels run asynchronously, a timed call is over when they are."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 1,
    calls: int = 1,
    budget_s: float = 0.0,
    max_rounds: int | None = None,
    device: torch.device | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one sample per round.

    Each candidate is first called ``warmup`` times untimed (allocations, first-touch,
    a native build). A sample is the mean of ``calls`` consecutive calls; with
    ``calls > 1`` an untimed call comes first, so that every candidate is timed in its
    own steady state (the previous candidate's freed memory may have gone back to the
    system). At least ``rounds`` rounds, and more, up to ``max_rounds``, until the timed
    calls took ``budget_s`` seconds in all. ``device``: a GPU to wait for around each sample.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; got {rounds}")
    wait = (lambda: synchronize(device)) if device is not None else (lambda: None)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    spent = 0.0
    done = 0
    while done < rounds or (spent < budget_s and done < (max_rounds or rounds)):
        for name, fn in candidates.items():
            if calls > 1:
                fn()
            wait()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            wait()
            seconds = time.perf_counter() - start
            spent += seconds
            samples[name].append(seconds / calls)
        done += 1
    return samples
