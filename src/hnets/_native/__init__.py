"""Fused CPU kernels for the magnitude nonlinearity, compiled on first use.

The magnitude ReLU and its batch-norm variant are a handful of flops per complex
pair, but as PyTorch ops they take a dozen passes over memory, several of them on
stride-2 views that do not vectorise; on CPU that made them a third of an H-Net
training step. ``magnitude.c`` does each direction in one pass (two for the
batch-norm backward), with OpenMP over positions.

The C file is plain C99 without Python or torch headers, so it builds with the
system compiler in well under a second, and is loaded with :mod:`ctypes`. The
shared object is cached under ``$HNETS_CACHE_DIR`` (default
``$XDG_CACHE_HOME/hnets`` or ``~/.cache/hnets``), keyed by the source, the flags,
the compiler and the CPU. Where no compiler is found or the build fails, hnets
warns once and uses its PyTorch implementation (same results up to float
round-off). ``HNETS_NATIVE=0`` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = [
    "available",
    "disabled",
    "relu_forward",
    "relu_backward",
    "power_sum",
    "split3",
    "merge3",
    "synthesise",
    "synthesise_backward",
    "split9",
    "merge9",
    "relu_products",
    "tile_spread",
    "usable",
]

_SOURCE = Path(__file__).with_name("magnitude.c")
_ABI_VERSION = 10
# -fno-tree-loop-distribute-patterns: short copy loops stay loops, not memcpy calls
_BASE_FLAGS = [
    "-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-tree-loop-distribute-patterns",
    "-fopenmp", "-shared", "-fPIC",
]  # fmt: skip
_lock = threading.Lock()
_state: dict[str, object] = {}


def disabled() -> bool:
    """``True`` when ``HNETS_NATIVE=0`` asks for the PyTorch implementation."""
    return os.environ.get("HNETS_NATIVE", "1").strip().lower() in ("0", "false", "off", "no")


def _cache_dir() -> Path:
    if os.environ.get("HNETS_CACHE_DIR"):
        return Path(os.environ["HNETS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hnets"


def _compiler() -> str | None:
    """``$CC``, else the compiler Python was built with, else ``cc``: the first on ``PATH``."""
    python_cc = (sysconfig.get_config_var("CC") or "").split()
    for name in (os.environ.get("CC"), python_cc[0] if python_cc else None, "cc"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_model() -> str:
    """The CPU's model name and feature flags (``-march=native`` depends on both)."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.readlines()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line for line in lines if line.startswith("model name")), "")
    flags = next((line for line in lines if line.startswith("flags")), "")
    return model + flags


def _build(cc: str) -> Path:
    source = _SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    cpu = _cpu_model()
    error = "?"
    for extra in (["-march=native"], []):
        flags = _BASE_FLAGS + extra
        key = hashlib.sha256(
            b"\0".join([source, " ".join(flags).encode(), version.encode(), cpu.encode()])
        ).hexdigest()[:16]
        target = _cache_dir() / f"magnitude-{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cc, *flags, str(_SOURCE), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            os.replace(tmp, target)  # atomic: a concurrent build never sees half a file
            return target
        os.unlink(tmp)
        error = (proc.stderr.strip().splitlines() or ["?"])[-1]
    raise RuntimeError(f"{cc} failed: {error}")


def _load() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    lib = ctypes.CDLL(str(_build(cc)))
    if lib.hnets_abi_version() != _ABI_VERSION:
        raise RuntimeError("stale kernel build (ABI version mismatch)")
    f32, ptr, long_, int_ = ctypes.c_float, ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.hnets_relu_forward.argtypes = [ptr, ptr, long_, long_, ptr, ptr, f32, int_]
    lib.hnets_relu_forward.restype = None
    lib.hnets_power.argtypes = [ptr, ptr, long_, long_, int_]
    lib.hnets_power.restype = None
    lib.hnets_relu_backward.argtypes = [
        ptr, ptr, ptr, long_, long_, ptr, ptr, f32, ptr, ptr, ptr, long_, long_, long_, int_,
    ]  # fmt: skip
    lib.hnets_relu_backward.restype = None
    lib.hnets_split3.argtypes = [ptr, ptr, ptr, ptr, long_, int_]
    lib.hnets_split3.restype = None
    lib.hnets_merge3.argtypes = [ptr, ptr, ptr, ptr, long_, f32, f32, int_]
    lib.hnets_merge3.restype = None
    lib.hnets_tile_spread.argtypes = [ptr, ptr, long_, long_, long_, long_, long_, int_]
    lib.hnets_tile_spread.restype = None
    ptrs = ctypes.POINTER(ctypes.c_void_p)
    for name, first in (("split9", ptr), ("gsplit9", ptr), ("merge9", ptrs), ("gmerge9", ptrs)):
        getattr(lib, f"hnets_{name}").argtypes = [first, ptr, long_, long_, int_]
        getattr(lib, f"hnets_{name}").restype = None
    lib.hnets_relu_pool.argtypes = [
        int_, ptrs, ptr, long_, long_, long_, long_, ptr, ptr, f32, long_, int_,
    ]  # fmt: skip
    lib.hnets_relu_pool.restype = None
    lib.hnets_synthesise.argtypes = [ptr] * 5 + [long_] * 7 + [int_]
    lib.hnets_synthesise.restype = None
    lib.hnets_synthesise_backward.argtypes = [ptr] * 7 + [long_] * 7 + [int_]
    lib.hnets_synthesise_backward.restype = None
    return lib


def _library() -> ctypes.CDLL | None:
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _load()
            except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
                _state["lib"] = None
                warnings.warn(
                    f"hnets: the fused CPU kernels are unavailable ({exc}); using the slower "
                    "PyTorch implementation",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    """Whether the kernels are enabled and built (builds them on the first call)."""
    return not disabled() and _library() is not None


def usable(
    *tensors: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
) -> bool:
    """Whether the kernels can run on these tensors: float32, CPU, dense in ``memory_format``.

    Never under ``torch.compile``/``torch.export`` or TorchScript tracing, which see the
    PyTorch implementation.
    """
    if disabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu":
            return False
        if not t.is_contiguous(memory_format=memory_format):
            return False
    return _library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _stream_vector(t: torch.Tensor | None, streams: int, fill: float) -> torch.Tensor:
    if t is None:
        return torch.full((streams,), fill, dtype=torch.float32)
    return t.detach().to(torch.float32).reshape(streams).contiguous()


def relu_forward(
    pairs: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor,
    eps: float,
    *,
    pool: int = 1,
    inplace: bool = False,
) -> torch.Tensor:
    """``y relu(|y|_eps + b) / |y|_eps``, ``y = z * scale``, on pixel-major ``(..., C, M, 2)``.

    With ``pool=k > 1``, ``pairs`` is ``(B, H, W, C, M, 2)`` with ``H`` and ``W``
    multiples of ``k`` and the result is its ``k x k`` mean pool ``(B, H/k, W/k, C, M, 2)``.
    With ``inplace=True`` (and ``pool=1``) the result is written over ``pairs``.
    """
    if pool > 1:
        b, h, w, c, m = pairs.shape[:5]
        return _relu_pool(0, [pairs], (b, h, w), (c, m), scale, bias, eps, pool)
    streams = pairs.shape[-3] * pairs.shape[-2]
    scale_v = _stream_vector(scale, streams, 1.0)
    bias_v = _stream_vector(bias, streams, 0.0)
    positions = pairs.numel() // (2 * streams) if streams else 0
    out = pairs if inplace else torch.empty_like(pairs)
    _library().hnets_relu_forward(  # type: ignore[union-attr]
        _ptr(pairs), _ptr(out), positions, streams, _ptr(scale_v), _ptr(bias_v), eps,
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def power_sum(pairs: torch.Tensor) -> torch.Tensor:
    """``sum |z|^2`` over all positions, per stream ``(C, M)``, float64."""
    c, m = pairs.shape[-3], pairs.shape[-2]
    out = torch.empty(c, m, dtype=torch.float64)
    _library().hnets_power(  # type: ignore[union-attr]
        _ptr(pairs), _ptr(out), pairs.numel() // (2 * c * m), c * m, torch.get_num_threads()
    )
    return out


def relu_backward(
    grad: torch.Tensor,
    pairs: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor,
    eps: float,
    *,
    corr: torch.Tensor | None = None,
    write: bool = True,
    pool: int = 1,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The backward of :func:`relu_forward` in one pass.

    Returns ``(grad_pairs, grad_scale, grad_bias)``: ``grad_pairs`` is
    ``g s a + z (k a - corr)`` (see ``magnitude.c``; ``None`` when ``write`` is
    false), the two others are sums over positions per stream ``(C, M)``, float64.
    With ``pool=k > 1`` the forward was pooled and ``grad`` is the pooled gradient.
    """
    h, w = (pairs.shape[1], pairs.shape[2]) if pool > 1 else (1, 1)
    c, m = pairs.shape[-3], pairs.shape[-2]
    streams = c * m
    out = torch.empty_like(pairs) if write else None
    scale_v = _stream_vector(scale, streams, 1.0)
    bias_v = _stream_vector(bias, streams, 0.0)
    corr_v = _stream_vector(corr, streams, 0.0)
    grad_scale = torch.empty(c, m, dtype=torch.float64)
    grad_bias = torch.empty(c, m, dtype=torch.float64)
    _library().hnets_relu_backward(  # type: ignore[union-attr]
        _ptr(grad), _ptr(pairs), _ptr(out), pairs.numel() // (2 * streams), streams,
        _ptr(scale_v), _ptr(bias_v), eps, _ptr(corr_v), _ptr(grad_scale), _ptr(grad_bias),
        h, w, pool, torch.get_num_threads(),
    )  # fmt: skip
    return out, grad_scale, grad_bias


def split3(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Channels-last ``(B, 2S, H, W)`` images of interleaved pairs -> ``re``, ``im``, ``re + im``.

    Each output is a channels-last ``(B, S, H, W)`` tensor.
    """
    b, c2, h, w = images.shape
    shape = (b, c2 // 2, h, w)
    outs = [
        torch.empty(shape, dtype=images.dtype, memory_format=torch.channels_last) for _ in range(3)
    ]
    _library().hnets_split3(  # type: ignore[union-attr]
        _ptr(images), *(_ptr(t) for t in outs), images.numel() // 2, torch.get_num_threads()
    )
    return outs[0], outs[1], outs[2]


def merge3(
    p: torch.Tensor, q: torch.Tensor, r: torch.Tensor, sign_q: float, sign_r: float
) -> torch.Tensor:
    """Channels-last ``(B, T, H, W)`` maps -> interleaved ``(p + sign_q q, p + sign_r r)``.

    The result is a channels-last ``(B, 2T, H, W)`` tensor.
    """
    b, t, h, w = p.shape
    out = torch.empty((b, 2 * t, h, w), dtype=p.dtype, memory_format=torch.channels_last)
    _library().hnets_merge3(  # type: ignore[union-attr]
        _ptr(p), _ptr(q), _ptr(r), _ptr(out), p.numel(), sign_q, sign_r, torch.get_num_threads()
    )
    return out


def tile_spread(grad: torch.Tensor, k: int) -> torch.Tensor:
    """Channels-last ``(B, N, h, w)`` -> ``(B, N, h k, w k)``: each value / k^2 over its tile."""
    b, n, h, w = grad.shape
    out = torch.empty((b, n, h * k, w * k), dtype=grad.dtype, memory_format=torch.channels_last)
    _library().hnets_tile_spread(  # type: ignore[union-attr]
        _ptr(grad), _ptr(out), b, h, w, n, k, torch.get_num_threads()
    )
    return out


def synthesise(
    weight: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, layout: torch.Tensor
) -> torch.Tensor:
    """A filter bank ``(G, O, A, I, B)`` from ring weights ``(F, O, I, R)`` and a layout matrix.

    ``out[g, o, a, i, b] = sum_q c[o, i, q] layout[q, g, a, b]`` with the complex
    coefficients ``c[o, i, (f, r, p)] = weight[f, o, i, r] * (cos, sin)[p][f, o, i]``
    (``sin=None``: no phase, ``c = (weight, 0)``).
    """
    f, o, i, r = weight.shape
    _, g, a, b = layout.shape
    out = torch.empty((g, o, a, i, b), dtype=weight.dtype)
    _library().hnets_synthesise(  # type: ignore[union-attr]
        _ptr(weight), _ptr(cos), _ptr(sin), _ptr(layout), _ptr(out), f, o, i, r, g, a, b,
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def synthesise_backward(
    grad: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    layout_t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`synthesise` for ``weight`` and (with a phase) the phase angles.

    ``layout_t`` is ``layout`` transposed: ``(G, A, B, q)``, contiguous.
    """
    f, o, i, r = weight.shape
    g, a, b, _ = layout_t.shape
    grad_w = torch.empty_like(weight)
    grad_phase = None if sin is None else torch.empty((f, o, i), dtype=weight.dtype)
    _library().hnets_synthesise_backward(  # type: ignore[union-attr]
        _ptr(grad), _ptr(weight), _ptr(cos), _ptr(sin), _ptr(layout_t), _ptr(grad_w),
        _ptr(grad_phase), f, o, i, r, g, a, b, torch.get_num_threads(),
    )  # fmt: skip
    return grad_w, grad_phase


def _nine_planes(name: str, images: torch.Tensor) -> list[torch.Tensor]:
    b, c4, h, w = images.shape
    planes = torch.empty((9, b, h, w, c4 // 4), dtype=images.dtype)
    getattr(_library(), f"hnets_{name}")(
        _ptr(images), _ptr(planes), b * h * w, c4 // 4, torch.get_num_threads()
    )
    return [p.permute(0, 3, 1, 2) for p in planes.unbind(0)]


def _from_nine(name: str, maps: list[torch.Tensor]) -> torch.Tensor:
    b, c, h, w = maps[0].shape
    maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    out = torch.empty((b, 4 * c, h, w), dtype=maps[0].dtype, memory_format=torch.channels_last)
    pointers = (ctypes.c_void_p * 9)(*(m.data_ptr() for m in maps))
    getattr(_library(), f"hnets_{name}")(pointers, _ptr(out), b * h * w, c, torch.get_num_threads())
    return out


def split9(images: torch.Tensor) -> list[torch.Tensor]:
    """Channels-last ``(B, 4C, H, W)`` maps of orders 0 and 1 -> the nine real inputs of the
    Karatsuba-Gauss product (``magnitude.c``), each a channels-last ``(B, C, H, W)``."""
    return _nine_planes("split9", images)


def merge9(products: list[torch.Tensor]) -> torch.Tensor:
    """The nine real products ``(B, T, H, W)`` -> channels-last ``(B, 4T, H, W)`` output."""
    return _from_nine("merge9", products)


def split9_grad(grad: torch.Tensor) -> list[torch.Tensor]:
    """Backward of :func:`merge9`: gradients of the nine products (2nd of each three negated)."""
    return _nine_planes("gsplit9", grad)


def merge9_grad(parts: list[torch.Tensor]) -> torch.Tensor:
    """Backward of :func:`split9` (with the 2nd of each three input gradients negated)."""
    return _from_nine("gmerge9", parts)


def relu_products(
    products: list[torch.Tensor],
    streams: tuple[int, int],
    scale: torch.Tensor | None,
    bias: torch.Tensor,
    eps: float,
    *,
    pool: int = 1,
) -> torch.Tensor:
    """:func:`relu_forward` (with ``pool``) of a convolution's output given as its unmerged
    real products: Gauss's three ``(B, T, H, W)`` (:func:`merge3` with signs -1, +1) or
    the nine of :func:`merge9`. ``streams`` is ``(C, M)`` of the output; returns the
    pixel-major ``(B, H/pool, W/pool, C, M, 2)`` result, float32.
    """
    b, _, h, w = products[0].shape
    products = [p.contiguous(memory_format=torch.channels_last) for p in products]
    return _relu_pool(1 if len(products) == 3 else 2, products, (b, h, w), streams, scale, bias,
                      eps, pool)  # fmt: skip


def _relu_pool(
    kind: int,
    planes: list[torch.Tensor],
    positions: tuple[int, int, int],
    streams: tuple[int, int],
    scale: torch.Tensor | None,
    bias: torch.Tensor,
    eps: float,
    pool: int,
) -> torch.Tensor:
    """``hnets_relu_pool``: kind 0 interleaved pairs, 1 Gauss's or 2 Karatsuba's products."""
    (b, h, w), (c, m) = positions, streams
    scale_v = _stream_vector(scale, c * m, 1.0)
    bias_v = _stream_vector(bias, c * m, 0.0)
    out = torch.empty((b, h // pool, w // pool, c, m, 2), dtype=planes[0].dtype)
    pointers = (ctypes.c_void_p * len(planes))(*(p.data_ptr() for p in planes))
    _library().hnets_relu_pool(  # type: ignore[union-attr]
        kind, pointers, _ptr(out), b, h, w, c * m, _ptr(scale_v), _ptr(bias_v), eps, pool,
        torch.get_num_threads(),
    )  # fmt: skip
    return out
