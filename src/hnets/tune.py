"""``hnets tune``: measure which convolution scheme each layer of a model runs fastest here.

An explicit step ahead of a run, for the last few percent: ``impl="auto"`` otherwise
uses the fixed table of :mod:`hnets.nn.dispatch`, and nothing is timed inside a
training or inference run. :func:`tune_model` calls the model once per mode (training at
``batch_size``, forward and backward; inference at ``eval_batch_size``), which records
what each convolution receives, then times every eligible scheme of each layer alone
on that input, in separate calls, interleaved (:func:`hnets._timing.interleaved`: an
untimed call each, then at least :data:`MIN_ROUNDS` rounds and more within
:data:`BUDGET_S` seconds, at most :data:`MAX_ROUNDS`), and stores the fastest median per
layer signature in the machine's tuning cache, which later runs read. A layer inside an
:class:`~hnets.nn.HBlock` is timed as the whole block, since its scheme decides which
fused path runs after it. Time it on a quiet machine: other work on the cores changes
which scheme wins.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ._timing import interleaved
from .nn import HBlock, HConv2d, dispatch

__all__ = ["MIN_ROUNDS", "MAX_ROUNDS", "BUDGET_S", "tune_model", "format_tuning"]

#: Timed rounds per layer (one call of every scheme each): at least, and at most.
MIN_ROUNDS, MAX_ROUNDS = 3, 9
#: Seconds of timed calls per layer after which no round beyond MIN_ROUNDS starts.
BUDGET_S = 0.25


def tune_model(
    model: nn.Module,
    *,
    batch_size: int = 64,
    eval_batch_size: int = 500,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    again: bool = False,
) -> list[dict[str, object]]:
    """Time ``model``'s convolution schemes as training and inference call them; store
    the fastest per layer signature in the tuning cache (:func:`hnets.nn.dispatch.record`).

    Layers whose signature the cache already holds keep their decision unless
    ``again``. Parameters and buffers are as before (no parameter is updated; the
    batch-norm statistics the calls change are put back) and the model is left in eval
    mode. Returns one row per ``HConv2d`` and mode that has a choice (a first layer fed
    real images has one scheme): ``layer``, ``mode``, ``signature``, ``choice``,
    ``seconds`` (each scheme's median) and ``measured`` (``False``: read from the cache).
    """
    block_of = {id(m.conv): m for m in model.modules() if isinstance(m, HBlock)}
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, HConv2d)]
    units = {id(conv): block_of.get(id(conv), conv) for _, conv in convs}
    rows: list[dict[str, object]] = []
    if not convs:
        return rows
    state = copy.deepcopy(model.state_dict())
    try:
        for mode, batch in (("train", batch_size), ("infer", eval_batch_size)):
            model.train(mode == "train")
            inputs = _inputs_of(model, list(units.values()), torch.rand(batch, *image_shape), mode)
            for name, conv in convs:
                z = inputs.get(id(units[id(conv)]))
                if z is None or z.dim() != 6:  # not called, or real images: nothing to choose
                    continue
                rows.append(_tune_layer(name, conv, units[id(conv)], z, mode, again))
    finally:
        model.load_state_dict(state)
        model.eval()
    return rows


def _tune_layer(
    name: str, conv: HConv2d, unit: nn.Module, z: torch.Tensor, mode: str, again: bool
) -> dict[str, object]:
    """Measure (or read) the decision of one layer for input ``z`` in ``mode``."""
    key = conv.dispatch_key(z, training=mode == "train")
    row: dict[str, object] = {"layer": name, "mode": mode, "signature": key}
    if not again and dispatch.tuned(key, conv.candidates()) is not None:
        return {**row, **dispatch.decisions()[key], "measured": False}
    calls = {impl: _forced_call(conv, unit, z, mode, impl) for impl in conv.candidates()}
    samples = interleaved(
        calls, rounds=MIN_ROUNDS, budget_s=BUDGET_S, max_rounds=MAX_ROUNDS, device=z.device
    )
    seconds = {impl: statistics.median(v) for impl, v in samples.items()}
    entry = {"choice": min(seconds, key=seconds.__getitem__), "seconds": seconds}
    dispatch.record({key: entry})
    return {**row, **entry, "measured": True}


def _forced_call(
    conv: HConv2d, unit: nn.Module, z: torch.Tensor, mode: str, impl: str
) -> Callable[[], None]:
    def call() -> None:
        with _forced(conv, impl):
            _call(unit, z, mode)

    return call


@contextlib.contextmanager
def _forced(conv: HConv2d, impl: str) -> Iterator[None]:
    before, conv.impl = conv.impl, impl
    try:
        yield
    finally:
        conv.impl = before


def _call(module: nn.Module, x: torch.Tensor, mode: str) -> None:
    """One training (forward and backward) or inference call of ``module`` on ``x``."""
    if mode == "train":
        module(x.detach().requires_grad_(True)).sum().backward()
        module.zero_grad(set_to_none=True)
    else:
        with torch.inference_mode():
            module(x)


def _inputs_of(
    model: nn.Module, units: list[nn.Module], x: torch.Tensor, mode: str
) -> dict[int, torch.Tensor]:
    """One call of ``model`` on ``x``; what each of ``units`` received first (by ``id``)."""
    seen: dict[int, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple) -> None:  # returns None: the input stays
        seen.setdefault(id(module), args[0].detach().clone())

    hooks = [unit.register_forward_pre_hook(record) for unit in units]
    try:
        _call(model, x, mode)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def format_tuning(rows: list[dict[str, object]]) -> str:
    """Per layer and mode: the scheme chosen first, then every scheme's ms per call."""
    lines = ["per-layer schemes (ms per call, chosen first; cached: read from the cache):"]
    for row in rows:
        seconds = dict(row["seconds"])  # type: ignore[call-overload]
        order = sorted(seconds, key=lambda k: (k != row["choice"], seconds[k]))
        times = "  ".join(f"{k} {1e3 * seconds[k]:.2f}" for k in order)
        flag = "" if row.get("measured", True) else "  (cached)"
        lines.append(f"  {row['layer']:16s} {row['mode']:5s}  {times}{flag}")
    return "\n".join(lines)
