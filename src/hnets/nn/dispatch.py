"""Which convolution scheme :class:`~hnets.nn.HConv2d` runs for ``impl="auto"``.

The dense bank, Gauss's three products and Karatsuba's nine give the same result up to
float round-off (tested); which is fastest depends on the layer's shape, the device and
the CPU's instruction set. ``impl="auto"`` resolves to:

1. the decision ``hnets tune`` stored for this layer signature on this machine, if the
   tuning cache has one (:func:`tuned`); else
2. :func:`table_choice`: a fixed table, a pure function of the layer's shape, the
   device and the CPU capability PyTorch reports
   (``torch.backends.cpu.get_cpu_capability()``), made from per-layer measurements on
   both instruction sets (``docs/speed.md`` gives them).

Nothing is timed inside a training or inference run: measuring is ``hnets tune``'s job
(:mod:`hnets.tune`), an explicit step ahead of a run, as with cuDNN's benchmark mode
being off by default. The cache is ``<cache dir>/autotune-<machine>.json``
(``$HNETS_CACHE_DIR``, else ``$XDG_CACHE_HOME/hnets`` or ``~/.cache/hnets``), where
``<machine>`` hashes the CPU model and flags (or the GPU's name), the torch version and
the ISA caps; it is read once per process and written atomically, merged with what is
on disk. ``impl=`` on the layer forces a scheme; traced, scripted and compiled graphs
use the table.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "table_only",
    "capability",
    "table_choice",
    "signature",
    "tuned",
    "record",
    "decisions",
    "clear_memory",
    "cache_path",
]

_FORMAT = 2  # 1: decisions of the measured-on-the-job dispatch (keys differ): not read
_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] = {}
_loaded_from: Path | None = None
_table_only = 0  # depth of table_only() blocks
# fixed for the process (ATEN_CPU_CAPABILITY is read at start-up); a constant, which
# torch.compile can trace, unlike the call
_CPU_CAPABILITY = torch.backends.cpu.get_cpu_capability()


@contextlib.contextmanager
def table_only() -> Iterator[None]:
    """Inside the block ``impl="auto"`` uses the fixed table, whatever ``hnets tune``
    stored (for figures that must not depend on a machine's tuning, e.g. memory)."""
    global _table_only
    _table_only += 1
    try:
        yield
    finally:
        _table_only -= 1


def capability(device: torch.device) -> str:
    """``"cuda"``/``"mps"``/... for an accelerator, else the CPU's: ``"AVX512"``,
    ``"AVX2"`` or ``"DEFAULT"`` (what PyTorch's CPU kernels use here; it follows
    ``ATEN_CPU_CAPABILITY``)."""
    return _CPU_CAPABILITY if device.type == "cpu" else device.type


def table_choice(
    *,
    in_channels: int,
    out_channels: int,
    in_orders: int,
    out_orders: int,
    pixels: int,
    native: bool,
    karatsuba: bool,
    training: bool,
    capability: str,
) -> str:
    """The scheme of the fixed table for one layer call.

    ``pixels``: the input map's height x width; ``native``: the native kernels can run
    this call (float32, CPU); ``karatsuba``: the layer has orders 0..1 on both sides;
    ``capability``: :func:`capability` of the device. With ``S`` the complex streams
    (channels x orders) on the smaller side and ``C`` the channels on the smaller side:

    ============================ =====================================================
    CPU, native kernels          Karatsuba from ``C >= 32`` (AVX2 in inference: from
                                 ``C >= 16``); else Gauss from ``S >= 32``, or
                                 ``S >= 16`` on maps of at most 16 x 16; else dense
    CPU, no native kernels       Gauss from ``S >= 64``, else dense
    GPU (CUDA, MPS, ...)         dense (one wide convolution; not measured)
    ============================ =====================================================

    Measured per layer of the recipe's ``HNetMNIST`` (``hnets tune``) on an Intel Xeon
    with AVX-512, the same Xeon with oneDNN capped at AVX2, and an AMD EPYC with AVX2:
    the AVX2-only inference entry is where both AVX2 machines chose Karatsuba for the
    19 -> 38-channel layer (23-30% faster than Gauss in inference; in training the two
    machines disagreed, within 7-13%).
    """
    streams = min(in_channels * in_orders, out_channels * out_orders)
    channels = min(in_channels, out_channels)
    if capability not in ("AVX512", "AVX2", "DEFAULT"):
        return "dense"
    if not native:
        return "gauss" if streams >= 64 else "dense"
    if karatsuba:
        least = 16 if capability == "AVX2" and not training else 32
        if channels >= least:
            return "karatsuba"
    return "gauss" if streams >= 32 or (streams >= 16 and pixels <= 256) else "dense"


def signature(
    *,
    in_channels: int,
    out_channels: int,
    in_orders: int,
    out_orders: int,
    kernel_size: int,
    stride: int,
    padding: Any,
    height: int,
    width: int,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    training: bool,
) -> str:
    """The key a tuned decision is stored under (readable; batch sizes in powers of 2)."""
    bucket = 1 << max(0, math.ceil(math.log2(max(batch, 1))))
    return (
        f"c{in_channels}x{in_orders}->{out_channels}x{out_orders} k{kernel_size} s{stride} "
        f"p{padding} {height}x{width} b{bucket} {str(dtype).replace('torch.', '')} "
        f"{device.type} t{torch.get_num_threads()} {'train' if training else 'infer'}"
    )


def tuned(key: str, candidates: tuple[str, ...]) -> str | None:
    """The scheme ``hnets tune`` stored for ``key``, if it was measured against exactly
    ``candidates`` (a scheme added later makes the decision stale); else ``None``."""
    if _table_only:
        return None
    with _lock:
        _load_disk()
        entry = _memory.get(key)
    if entry is None or set(entry.get("seconds", ())) != set(candidates):
        return None
    return str(entry["choice"])


def record(entries: dict[str, dict[str, Any]]) -> None:
    """Store decisions ``key -> {"choice": scheme, "seconds": {scheme: median}}``, in
    memory and in the cache file (merged with what is on disk, replaced atomically; a
    file that cannot be written only warns: the decisions stay in memory)."""
    import warnings

    from .._io import atomic_write
    from ..errors import HNetsError

    with _lock:
        _load_disk()
        _memory.update(entries)
        path = cache_path()
        merged = {**_read(path), **entries}
        payload = {"format": _FORMAT, "machine": platform.processor(), "decisions": merged}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "w") as fh:
                json.dump(payload, fh, indent=1, sort_keys=True)
        except (OSError, HNetsError) as exc:
            message = f"hnets: cannot write {path} ({exc}); tuning stays in memory"
            warnings.warn(message, stacklevel=2)


def decisions() -> dict[str, dict[str, Any]]:
    """The tuned decisions known to this process (the cache file's and its own)."""
    with _lock:
        _load_disk()
        return {k: dict(v) for k, v in _memory.items()}


def clear_memory() -> None:
    """Forget the decisions in memory (the file stays); the next lookup reads it again."""
    global _loaded_from
    with _lock:
        _memory.clear()
        _loaded_from = None


def cache_path() -> Path:
    """This machine's tuning cache file."""
    base = os.environ.get("HNETS_CACHE_DIR")
    if base:
        root = Path(base)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hnets"
    return root / f"autotune-{_machine_key()}.json"


def _machine_key() -> str:
    """CPU model and flags (or the first GPU's name), torch's version and ISA caps, hashed."""
    # the ISA oneDNN may use and the native kernels' -march change what is fastest
    caps = tuple(os.environ.get(v, "") for v in ("ONEDNN_MAX_CPU_ISA", "HNETS_NATIVE_ARCH"))
    return _hashed_machine(caps)


@functools.cache
def _hashed_machine(caps: tuple[str, ...]) -> str:
    """Read once per process (every lookup needs it)."""
    parts = [torch.__version__, platform.machine(), *caps]
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.readlines()
        parts += [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        parts.append(platform.processor())
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _load_disk() -> None:
    """Read the cache file once per process and per path (call with ``_lock`` held)."""
    global _loaded_from
    path = cache_path()
    if _loaded_from == path:
        return
    _loaded_from = path
    _memory.clear()  # another cache directory: another machine's decisions
    _memory.update(_read(path))


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: the table decides (and tune rewrites it)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return {}
    entries = data.get("decisions")
    if not isinstance(entries, dict):
        return {}
    return {
        k: v
        for k, v in entries.items()
        if isinstance(v, dict) and isinstance(v.get("choice"), str)
        and isinstance(v.get("seconds"), dict)
    }  # fmt: skip
