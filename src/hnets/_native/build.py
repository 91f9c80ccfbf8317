"""Building and loading ``kernels.c``: compiler, flags, fallback chain, cache, identity check.

The C file is plain C99 without Python or torch headers, so it builds with the
system compiler in well under a second, and is loaded with :mod:`ctypes`. The
shared object is cached under ``$HNETS_CACHE_DIR`` (default
``$XDG_CACHE_HOME/hnets`` or ``~/.cache/hnets``), named after the build variant, the
source's hash and a key of the flags, the compiler and the CPU. The build tries OpenMP
first, then (a compiler without it, as Apple clang) a single-threaded build, dropping
tuning flags the compiler rejects; :func:`variant` says which one runs. Where no
compiler is found or nothing builds, hnets warns once and uses its PyTorch
implementation (same results up to float round-off). ``HNETS_NATIVE=0`` turns the
kernels off.

**Identity.** :func:`source_hash` hashes the text of ``kernels.c``; the build passes it
to the compiler as ``-DHNETS_SOURCE_HASH=...``, the library returns it from
``hnets_source_hash()``, and :func:`_open` refuses a library whose hash is not the
source's (a stale build). The hash is also in the cached file's name, so a changed
source builds a new library: there is no version number to keep in step by hand.
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

import torch  # noqa: F401 - loaded first: its OpenMP runtime is the one ours binds to (_load)

__all__ = ["available", "disabled", "library", "source_hash", "variant"]

_SOURCE = Path(__file__).with_name("kernels.c")
# Always passed; the first two keep every rounding as kernels.c spells it.
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


class StaleBuildError(RuntimeError):
    """A library built from another ``kernels.c`` than the one next to this module."""


def disabled() -> bool:
    """``True`` when ``HNETS_NATIVE=0`` asks for the PyTorch implementation."""
    return os.environ.get("HNETS_NATIVE", "1").strip().lower() in ("0", "false", "off", "no")


def source_hash(source: bytes) -> int:
    """The identity of a ``kernels.c`` text: the first 64 bits of its SHA-256."""
    return int.from_bytes(hashlib.sha256(source).digest()[:8], "big")


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


def _compile(cc: str, flags: list[str], target: Path, identity: str) -> str | None:
    """Build ``target`` with ``flags`` and the ``identity`` define (``-DHNETS_SOURCE_HASH=...``);
    ``None`` on success, else the compiler's messages."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, identity, *flags, str(_SOURCE), "-o", tmp, "-lm"]
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


def _open(path: Path, expected_hash: int) -> ctypes.CDLL:
    """Load a built library, check it was built from this source, declare its signatures."""
    lib = ctypes.CDLL(str(path))
    lib.hnets_source_hash.argtypes = []
    lib.hnets_source_hash.restype = ctypes.c_uint64
    built_from = lib.hnets_source_hash()
    if built_from != expected_hash:
        raise StaleBuildError(
            f"stale kernel build {path.name}: built from source {built_from:016x}, "
            f"kernels.c is {expected_hash:016x}"
        )
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
    hands over to the next. A cached library that fails to load or is stale counts as
    that flag set's failure (the chain moves on; a process cannot reload a path it has
    loaded once).

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
    expected = source_hash(_SOURCE.read_bytes())
    identity = f"-DHNETS_SOURCE_HASH=0x{expected:016x}ULL"
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    cpu = _cpu_model()
    suffix, link = _platform()

    def target(variant: str, flags: list[str]) -> Path:
        fields = [variant, " ".join(flags), version, cpu]
        key = hashlib.sha256("\0".join(fields).encode()).hexdigest()[:16]
        return _cache_dir() / f"kernels-{variant}-{expected:016x}-{key}{suffix}"

    errors: dict[Path, str] = {}
    for variant, required, tried in _VARIANTS:
        for n in range(len(tried), -1, -1):
            for extra in itertools.combinations(tried, n):
                flags = [*_FLAGS, *required, *extra, *link]
                path = target(variant, flags)
                if path.exists():
                    try:
                        return _open(path, expected), flags
                    except (OSError, RuntimeError, AttributeError) as exc:
                        errors[path] = str(exc)
    error = "?"
    for variant, required, tried in _VARIANTS:
        extra = list(tried)
        while True:
            flags = [*_FLAGS, *required, *extra, *link]
            path = target(variant, flags)
            error = errors.get(path) or _compile(cc, flags, path, identity) or ""
            if not error:
                try:
                    return _open(path, expected), flags
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


def library() -> ctypes.CDLL | None:
    """The loaded library (built on the first call), or ``None`` where it is unavailable.

    Unavailable: warns once (a :class:`RuntimeWarning`) and stays so for the process.
    """
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
    return not disabled() and library() is not None


def variant() -> str | None:
    """Which build runs the kernels: ``"openmp"`` (multi-threaded), ``"serial"`` (built
    where the compiler has no OpenMP: one thread) or ``None`` (off or unavailable)."""
    if not available():
        return None
    return _state["variant"]  # type: ignore[return-value]
