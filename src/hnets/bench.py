"""Side-by-side speed measurements (``hnets bench``).

Every comparison runs its candidates interleaved in one process (A, B, A, B, ...)
and reports medians and ratios: absolute times drift on a shared machine, ratios
measured side by side much less. Never run it while something else loads the CPU.

Each sample of the model and layer comparisons times a few consecutive calls after
one untimed call, so that every candidate is measured in its own steady state, as
in a training loop or an inference server. With one call per sample, glibc's malloc
had often returned the freed memory of the previous candidate to the system and
each call paid page faults for its activations anew: the ratios then moved by
about +-5% from run to run depending on which candidate ran before which.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._timing import interleaved
from .models import HNetMNIST
from .nn import HConv2d
from .nn.schemes import SCHEMES

__all__ = [
    "compare",
    "compare_models",
    "bench_conv",
    "bench_models",
    "dense_equivalent_cnn",
    "machine_description",
    "saved_activation_bytes",
    "training_step_peak_bytes",
]


@dataclass
class Timing:
    """Median seconds per call of one candidate, and its ratio to the first candidate."""

    name: str
    median_s: float
    ratio: float


def compare(
    candidates: dict[str, Callable[[], object]],
    *,
    repeats: int = 9,
    warmup: int = 2,
    calls: int = 1,
) -> list[Timing]:
    """Time callables interleaved; ratios are relative to the first candidate.

    Each of the ``repeats`` samples per candidate is the mean time of ``calls``
    consecutive calls; with ``calls > 1`` one untimed call comes first, so that a
    candidate starts its timed calls in its own steady state (see the module notes).
    """
    samples = interleaved(candidates, rounds=repeats, warmup=warmup, calls=calls)
    medians = {name: statistics.median(v) for name, v in samples.items()}
    base = next(iter(medians.values()))
    return [Timing(name, m, m / base) for name, m in medians.items()]


def machine_description() -> str:
    """CPU model, thread count and torch version, for the README's provenance lines."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    from . import _native

    variant = _native.variant()
    kernels = f"native kernels on ({variant})" if variant else "native kernels off"
    if variant and os.environ.get("HNETS_NATIVE_ARCH"):
        kernels += f" -march={os.environ['HNETS_NATIVE_ARCH']}"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    capped = f", oneDNN ISA capped at {isa}" if isa else ""
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}{capped}, {kernels}"


def bench_conv(
    *,
    batch: int = 46,
    channels: int = 16,
    order: int = 1,
    kernel_size: int = 5,
    size: int = 28,
    repeats: int = 9,
    calls: int = 3,
) -> list[Timing]:
    """Forward + backward of :class:`HConv2d` against ``F.conv2d`` on the dense real shape.

    The dense shape has ``channels * (order + 1) * 2`` input and output channels (64
    for the defaults). Candidates: dense NCHW (the baseline), dense channels-last
    (what a tuned plain layer gets), and ``HConv2d`` with each scheme of
    :data:`hnets.nn.schemes.SCHEMES` (``karatsuba`` where the orders are 0..1).
    """
    torch.manual_seed(0)
    dense_ch = channels * (order + 1) * 2
    x = torch.randn(batch, dense_ch, size, size, requires_grad=True)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(dense_ch, dense_ch, kernel_size, kernel_size, requires_grad=True)
    convs = {
        impl: HConv2d(channels, channels, kernel_size, max_order=order, impl=impl)
        for impl in SCHEMES
        if impl != "karatsuba" or order == 1
    }
    z = convs["dense"](torch.randn(batch, channels, order + 1, 2, size, size)).detach()
    z.requires_grad_()
    pad = kernel_size // 2

    def run_dense(inp: torch.Tensor) -> Callable[[], None]:
        return lambda: F.conv2d(inp, w, padding=pad).sum().backward()

    def run_h(impl: str) -> Callable[[], None]:
        return lambda: convs[impl](z).sum().backward()

    return compare(
        {
            f"F.conv2d {dense_ch}->{dense_ch} (NCHW)": run_dense(x),
            f"F.conv2d {dense_ch}->{dense_ch} (channels-last)": run_dense(x_cl),
            **{f"HConv2d impl={impl}": run_h(impl) for impl in convs},
        },
        repeats=repeats,
        calls=calls,
    )


def dense_equivalent_cnn(model: HNetMNIST) -> nn.Sequential:
    """A plain CNN whose convolutions have the dense real shapes of ``model``'s.

    Each ``HConv2d`` with ``C_in`` channels of ``M_in`` orders and ``C_out`` of ``M_out``
    becomes ``nn.Conv2d(2 * C_in * M_in, 2 * C_out * M_out)`` with the same kernel,
    followed by BatchNorm + ReLU, with the same pooling; global average pooling and
    a linear read-out close it.
    """
    layers: list[nn.Module] = []
    convs = [m for m in model.modules() if isinstance(m, HConv2d)]
    pools_after = {1, 3}
    for i, conv in enumerate(convs):
        cin = 1 if i == 0 else conv.in_channels * (conv.in_max_order + 1) * 2
        cout = conv.out_channels * (conv.max_order + 1) * 2
        layers.append(nn.Conv2d(cin, cout, conv.kernel_size, padding=conv.padding, bias=False))
        if i < len(convs) - 1:
            layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        if i in pools_after:
            layers.append(nn.AvgPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cout, 10)]
    return nn.Sequential(*layers)


def compare_models(
    models: dict[str, nn.Module], *, batch: int = 46, repeats: int = 7, calls: int = 5
) -> dict[str, list[Timing]]:
    """Training-step (SGD, momentum) and inference timings of image classifiers, interleaved.

    Every model takes ``(batch, 1, 28, 28)`` images and returns logits of 10 classes.
    """
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    optimisers = {
        k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()
    }

    def train_step(name: str) -> Callable[[], None]:
        model, opt = models[name], optimisers[name]

        def step() -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return step

    def infer(name: str) -> Callable[[], None]:
        model = models[name]

        def run() -> None:
            model.eval()
            with torch.inference_mode():
                model(x)

        return run

    return {
        "train": compare({k: train_step(k) for k in models}, repeats=repeats, calls=calls),
        "inference": compare({k: infer(k) for k in models}, repeats=repeats, calls=calls),
    }


def bench_models(*, batch: int = 46, repeats: int = 7, calls: int = 5) -> dict[str, list[Timing]]:
    """Training-step and inference throughput of :class:`HNetMNIST` vs its dense-equivalent CNN."""
    torch.manual_seed(0)
    hnet = HNetMNIST()
    models = {
        "dense-equivalent CNN (NCHW)": dense_equivalent_cnn(hnet),
        "dense-equivalent CNN (channels-last)": dense_equivalent_cnn(hnet).to(
            memory_format=torch.channels_last
        ),
        "HNetMNIST": hnet,
    }
    return compare_models(models, batch=batch, repeats=repeats, calls=calls)


def saved_activation_bytes(model: nn.Module, batch: int = 46) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of one training forward.

    This is what grows with the batch in a training step's peak memory (parameters,
    gradients and optimizer state aside), and unlike the process's resident size it
    is exactly reproducible. Views of one storage are counted once.
    """
    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    torch.manual_seed(0)
    x = torch.rand(batch, 1, 28, 28)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), torch.randint(0, 10, (batch,)))
    del loss
    return sum(storages.values())


def training_step_peak_bytes(model: nn.Module, batch: int = 46) -> dict[str, int] | None:
    """Peak memory of one AdamW training step, by kind, measured with torch's ``MemTracker``.

    The step (forward, backward, optimizer step) runs once untracked so that the
    optimizer state exists, then once under ``torch.distributed._tools.MemTracker``,
    which follows every tensor storage the step creates or holds (parameters,
    gradients, optimizer state, activations, temporaries) and records the moment
    their sum peaks. Returns the bytes of each kind at that moment and ``"total"``,
    or ``None`` where that (private) tracker is not available in this torch build.
    """
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:  # torch built without distributed, or the tool moved
        return None
    torch.manual_seed(0)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    return {
        ("total" if k == "Total" else getattr(k, "value", str(k)).lower()): int(v)
        for k, v in peak.items()
    }


def bench_memory(*, batch: int = 46) -> dict[str, dict[str, float]]:
    """Memory of a training step (MiB), per model: activations kept for the backward
    (:func:`saved_activation_bytes`) and the step's peak (:func:`training_step_peak_bytes`).

    The H-Net's layers run the fixed table's schemes here
    (:func:`hnets.nn.dispatch.table_only`): what a step keeps depends on the scheme, and
    a machine's tuned choices would make the byte counts depend on timing.
    """
    from .nn import dispatch

    hnet = HNetMNIST()
    models = {"dense-equivalent CNN (NCHW)": dense_equivalent_cnn(hnet), "HNetMNIST": hnet}
    report: dict[str, dict[str, float]] = {}
    with dispatch.table_only():
        for name, model in models.items():
            report[name] = _memory_row(model, batch)
    return report


def _memory_row(model: nn.Module, batch: int) -> dict[str, float]:
    row = {"saved activations": saved_activation_bytes(model, batch) / 2**20}
    peak = training_step_peak_bytes(model, batch)
    if peak is not None:
        row["step peak"] = peak["total"] / 2**20
        row["of which parameters+gradients+optimizer"] = (
            sum(peak.get(k, 0) for k in ("parameter", "gradient", "optstate")) / 2**20
        )
    return row


def to_jsonable(report: dict) -> dict:
    """Timings as plain dicts for ``--json``."""

    def convert(value):  # noqa: ANN001, ANN202
        if isinstance(value, Timing):
            return {"name": value.name, "median_ms": value.median_s * 1e3, "ratio": value.ratio}
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return convert(report)


def format_report(report: dict) -> str:
    """Human-readable tables of a ``hnets bench`` run."""
    lines = [f"machine: {report['machine']}"]
    if "conv" in report:
        lines += [
            "",
            "HConv2d forward+backward vs F.conv2d on the dense real shape "
            "(16 -> 16 channels, orders 1 -> 1, 5x5, 28x28):",
        ]
        lines += [
            f"  {t.name:42s} {t.median_s * 1e3:8.2f} ms   ratio {t.ratio:.2f}"
            for t in report["conv"]
        ]
    if "models" in report:
        for part, timings in report["models"].items():
            lines += ["", f"{part} throughput (images/s, higher is better; speed-up vs first row):"]
            for t in timings:
                lines.append(
                    f"  {t.name:42s} {report['batch'] / t.median_s:8.0f} img/s"
                    f"   speed-up {1 / t.ratio:.2f}x"
                )
    if "dispatch" in report:
        from .tune import format_tuning

        lines += ["", format_tuning(report["dispatch"])]
    if "memory" in report:
        lines += ["", "memory of an AdamW training step (MiB):"]
        for name, row in report["memory"].items():
            lines.append(f"  {name}")
            lines += [f"    {k:40s} {v:8.1f}" for k, v in row.items()]
    return "\n".join(lines)
