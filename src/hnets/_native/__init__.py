"""Fused CPU kernels for the magnitude nonlinearity, compiled on first use.

The magnitude ReLU and its batch-norm variant are a handful of flops per complex
pair, but as PyTorch ops they take a dozen passes over memory, several of them on
stride-2 views that do not vectorise; on CPU that made them a third of an H-Net
training step. ``magnitude.c`` does each direction in one pass (two for the
batch-norm backward), with OpenMP over positions.

The C file is plain C99 without Python or torch headers, so it builds with the
system compiler in well under a second, and is loaded with :mod:`ctypes`. The
shared object is cached under ``$HNETS_CACHE_DIR`` (default
``$XDG_CACHE_HOME/hnets`` or ``~/.cache/hnets``), keyed by the source, the build
variant, the flags, the compiler and the CPU. The build tries OpenMP first, then (a
compiler without it, as Apple clang) a single-threaded build, dropping tuning flags
the compiler rejects; :func:`variant` says which one runs. Where no compiler is
found or nothing builds, hnets warns once and uses its PyTorch implementation (same
results up to float round-off). ``HNETS_NATIVE=0`` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import sys
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
    "variant",
]

_SOURCE = Path(__file__).with_name("magnitude.c")
_ABI_VERSION = 11
# Always passed; the first two keep every rounding as magnitude.c spells it.
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno"]
# Tried, and dropped where the compiler rejects them: tuning for this CPU (Apple clang on
# arm64 and GCC on POWER reject -march=native), and GCC's flag that keeps short copy loops
# loops rather than memcpy calls (clang rejects it: "unknown argument").
# ``HNETS_NATIVE_ARCH`` replaces "native" (e.g. ``x86-64-v3``: AVX2 without AVX-512, to
# imitate an older server on this one, as ``ONEDNN_MAX_CPU_ISA=AVX2`` does for oneDNN).
_ARCH = os.environ.get("HNETS_NATIVE_ARCH", "native").strip() or "native"
_TUNING = [f"-march={_ARCH}", "-fno-tree-loop-distribute-patterns"]
# The build chain, best first: (variant, flags it needs, flags it tries). "serial" is for
# compilers without OpenMP (Apple clang, clang without libomp): the same one pass over
# memory on one thread, still far faster than the PyTorch path; -fopenmp-simd keeps the
# simd pragmas without the runtime.
_VARIANTS = (
    ("openmp", ["-fopenmp"], _TUNING),
    ("serial", [], ["-fopenmp-simd", *_TUNING]),
)
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
    """``$CC``, else the compiler Python was built with, else ``cc``, ``gcc`` or ``clang``
    (MinGW on Windows has no ``cc``): the first on ``PATH``."""
    python_cc = (sysconfig.get_config_var("CC") or "").split()
    for name in (os.environ.get("CC"), python_cc[0] if python_cc else None, "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _platform() -> tuple[str, list[str]]:
    """The shared library's file suffix and the flags that make one, on this OS.

    The one place that knows the OS. Windows (MinGW gcc or clang; MSVC's ``cl`` takes
    other flags and is not supported) wants no ``-fPIC``; macOS loads ``.dylib`` files
    (Apple clang takes ``-shared`` for ``-dynamiclib``).
    """
    if sys.platform == "win32":
        return ".dll", ["-shared"]
    if sys.platform == "darwin":
        return ".dylib", ["-shared", "-fPIC"]
    return ".so", ["-shared", "-fPIC"]


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


def _compile(cc: str, flags: list[str], target: Path) -> str | None:
    """Build ``target`` with ``flags``; ``None`` on success, else the compiler's messages."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, *flags, str(_SOURCE), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"
        try:
            os.replace(tmp, target)  # atomic: a concurrent build never sees half a file
        except OSError:
            if not target.exists():  # else another process put it there (and has it open)
                raise
        return None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _open(path: Path) -> ctypes.CDLL:
    """Load a built library and declare its functions' signatures."""
    lib = ctypes.CDLL(str(path))
    if lib.hnets_abi_version() != _ABI_VERSION:
        raise RuntimeError("stale kernel build (ABI version mismatch)")
    # int64_t for every size (C long is 32 bits on Windows), int for the thread count
    f32, ptr, i64, int_ = ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.hnets_openmp.argtypes = []
    lib.hnets_openmp.restype = int_
    lib.hnets_relu_forward.argtypes = [ptr, ptr, i64, i64, ptr, ptr, f32, int_]
    lib.hnets_relu_forward.restype = None
    lib.hnets_power.argtypes = [ptr, ptr, i64, i64, int_]
    lib.hnets_power.restype = None
    lib.hnets_relu_backward.argtypes = [
        ptr, ptr, ptr, i64, i64, ptr, ptr, f32, ptr, ptr, ptr, i64, i64, i64, int_,
    ]  # fmt: skip
    lib.hnets_relu_backward.restype = None
    lib.hnets_split3.argtypes = [ptr, ptr, ptr, ptr, i64, int_]
    lib.hnets_split3.restype = None
    lib.hnets_merge3.argtypes = [ptr, ptr, ptr, ptr, i64, f32, f32, int_]
    lib.hnets_merge3.restype = None
    lib.hnets_tile_spread.argtypes = [ptr, ptr, i64, i64, i64, i64, i64, int_]
    lib.hnets_tile_spread.restype = None
    ptrs = ctypes.POINTER(ctypes.c_void_p)
    for name, first in (("split9", ptr), ("gsplit9", ptr), ("merge9", ptrs), ("gmerge9", ptrs)):
        getattr(lib, f"hnets_{name}").argtypes = [first, ptr, i64, i64, int_]
        getattr(lib, f"hnets_{name}").restype = None
    lib.hnets_relu_pool.argtypes = [
        int_, ptrs, ptr, i64, i64, i64, i64, ptr, ptr, f32, i64, int_,
    ]  # fmt: skip
    lib.hnets_relu_pool.restype = None
    lib.hnets_synthesise.argtypes = [ptr] * 5 + [i64] * 7 + [int_]
    lib.hnets_synthesise.restype = None
    lib.hnets_synthesise_backward.argtypes = [ptr] * 7 + [i64] * 7 + [int_]
    lib.hnets_synthesise_backward.restype = None
    return lib


def _load() -> tuple[ctypes.CDLL, list[str]]:
    """The library and the flags it was built with: the first of the chain that loads.

    First a library this chain built before (best first; no compiler runs then), else
    down the chain: each variant with all the flags it tries, then without those the
    compiler's messages name, or without all of them where it names none; a variant
    that neither builds nor loads, or whose own flag (-fopenmp) the compiler rejects,
    hands over to the next.

    Next to torch's own OpenMP runtime: this module imports torch before it loads the
    library, and torch loads its libgomp.so.1 (the pip wheels ship one in torch/lib)
    with RTLD_GLOBAL through libtorch_global_deps. Our library's NEEDED libgomp.so.1
    has the same soname, so the loader reuses that copy rather than mapping the
    system's. Checked on Linux (torch 2.13, GCC 12): /proc/self/maps lists one libgomp,
    torch's, after loading (test_one_openmp_runtime_next_to_torch), and LD_DEBUG=bindings
    shows GOMP_parallel and omp_get_thread_num bound to it. Not so with clang's OpenMP
    (CC=clang with libomp installed): it links LLVM's libomp.so.5, which then runs next
    to torch's libgomp (checked: the kernels agree with PyTorch, two runtimes mapped).
    """
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    source = _SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    cpu = _cpu_model()
    suffix, link = _platform()

    def target(variant: str, flags: list[str]) -> Path:
        fields = [variant, " ".join(flags), version, cpu]
        key = hashlib.sha256(b"\0".join([source, *(f.encode() for f in fields)])).hexdigest()[:16]
        return _cache_dir() / f"magnitude-{variant}-{key}{suffix}"

    errors: dict[Path, str] = {}
    for variant, required, tried in _VARIANTS:
        for n in range(len(tried), -1, -1):
            for extra in itertools.combinations(tried, n):
                flags = [*_FLAGS, *required, *extra, *link]
                path = target(variant, flags)
                if path.exists():
                    try:
                        return _open(path), flags
                    except (OSError, RuntimeError, AttributeError) as exc:
                        errors[path] = str(exc)
    error = "?"
    for variant, required, tried in _VARIANTS:
        extra = list(tried)
        while True:
            flags = [*_FLAGS, *required, *extra, *link]
            path = target(variant, flags)
            error = errors.get(path) or _compile(cc, flags, path) or ""
            if not error:
                try:
                    return _open(path), flags
                except (OSError, RuntimeError, AttributeError) as exc:
                    error = str(exc)
            if any(flag in error for flag in required):
                break  # no OpenMP here: the next variant
            named = [flag for flag in extra if flag in error]
            fewer = [flag for flag in extra if flag not in named] if named else []
            if fewer == extra:
                break
            extra = fewer
    raise RuntimeError(f"{cc} failed: {(error.splitlines() or ['?'])[-1]}")


def _library() -> ctypes.CDLL | None:
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state:
            try:
                lib, flags = _load()
                _state["flags"] = flags
                _state["variant"] = "openmp" if lib.hnets_openmp() else "serial"
                _state["lib"] = lib  # last: its presence tells other threads it is ready
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


def variant() -> str | None:
    """Which build runs the kernels: ``"openmp"`` (multi-threaded), ``"serial"`` (built
    where the compiler has no OpenMP: one thread) or ``None`` (off or unavailable)."""
    if not available():
        return None
    return _state["variant"]  # type: ignore[return-value]


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
