"""The Python side of ``kernels.c``: one wrapper per kernel, checked at the ctypes boundary.

The C functions take raw pointers and trust them. Every wrapper here therefore checks,
before any pointer is passed, each tensor it is given (inputs, and an output it is
handed, such as ``inplace``'s; the outputs it allocates itself are right by
construction): float32 (float64 for the accumulators), on the CPU, the shape
the kernel will walk, and dense in the layout it reads (contiguous, or channels-last
for the ``(B, C, H, W)`` maps of the convolution schemes). A mismatch raises one
:class:`ValueError` naming the function and the tensor. The checks are attribute
comparisons only (no tensor ops): they run on every layer call. Callers are expected to
ask :func:`usable` first and take the PyTorch path where it says no.
"""

from __future__ import annotations

import ctypes

import torch

from . import build

__all__ = [
    "usable",
    "relu_forward",
    "relu_backward",
    "power_sum",
    "split3",
    "merge3",
    "synthesise",
    "synthesise_backward",
    "split9",
    "merge9",
    "split9_grad",
    "merge9_grad",
    "relu_products",
    "tile_spread",
]

_F32, _F64 = torch.float32, torch.float64
_CL = torch.channels_last


def usable(
    *tensors: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
) -> bool:
    """Whether the kernels can run on these tensors: float32, CPU, dense in ``memory_format``.

    Never under ``torch.compile``/``torch.export`` or TorchScript tracing, which see the
    PyTorch implementation.
    """
    if build.disabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu":
            return False
        if not t.is_contiguous(memory_format=memory_format):
            return False
    return build.library() is not None


# -- the boundary checks ---------------------------------------------------------------
def _refuse(fn: str, name: str, problem: str) -> None:
    raise ValueError(f"hnets._native.{fn}: {name} {problem}")


def _check(
    fn: str,
    name: str,
    t: torch.Tensor,
    shape: tuple[int, ...] | None = None,
    *,
    dtype: torch.dtype = _F32,
    layout: torch.memory_format = torch.contiguous_format,
) -> None:
    """Refuse ``t`` unless it is ``dtype``, on the CPU, ``shape`` (if given) and dense in
    ``layout``: what the kernel's pointer arithmetic assumes."""
    if t.dtype != dtype:
        _refuse(fn, name, f"is {t.dtype}; the kernel reads {dtype}")
    if not t.is_cpu:
        _refuse(fn, name, f"is on {t.device}; the kernel runs on the CPU")
    if shape is not None and t.shape != shape:
        _refuse(fn, name, f"has shape {tuple(t.shape)}; expected {tuple(shape)}")
    if not t.is_contiguous(memory_format=layout):
        kind = "channels-last" if layout == _CL else "contiguous"
        _refuse(fn, name, f"is not {kind} (strides {t.stride()}); the kernel reads it densely")


def _check_rank(fn: str, name: str, t: torch.Tensor, rank: int, what: str) -> None:
    """Refuse ``t`` unless it has ``rank`` dimensions (``what`` names them)."""
    if t.dim() != rank:
        _refuse(fn, name, f"has shape {tuple(t.shape)}; expected {what}")


def _check_pairs(fn: str, name: str, t: torch.Tensor) -> None:
    """Pixel-major complex pairs ``(..., C, M, 2)``, float32, contiguous."""
    if t.dim() < 3 or t.shape[-1] != 2:
        _refuse(fn, name, f"has shape {tuple(t.shape)}; expected pairs (..., C, M, 2)")
    _check(fn, name, t)


def _check_tiles(fn: str, name: str, t: torch.Tensor, pool: int) -> None:
    """Pixel-major ``(B, H, W, C, M, 2)`` maps whose ``H`` and ``W`` are multiples of ``pool``."""
    if t.dim() != 6 or t.shape[-1] != 2 or t.shape[1] % pool or t.shape[2] % pool:
        _refuse(
            fn, name, f"has shape {tuple(t.shape)}; expected (B, H, W, C, M, 2) with H and W "
            f"multiples of pool={pool}",
        )  # fmt: skip
    _check(fn, name, t)


def _stream_vector(
    fn: str, name: str, t: torch.Tensor | None, streams: int, fill: float
) -> torch.Tensor:
    """A per-stream parameter as the ``streams`` contiguous float32 values the kernel reads
    (any float dtype and shape with ``streams`` elements is converted; ``None``: ``fill``)."""
    if t is None:
        return torch.full((streams,), fill, dtype=_F32, device="cpu")
    if t.numel() != streams or not t.is_cpu:
        where = "" if t.is_cpu else f" on {t.device}"
        expected = f"expected {streams} values on the CPU"
        _refuse(fn, name, f"has shape {tuple(t.shape)}{where}; {expected}")
    return t.detach().to(_F32).reshape(streams).contiguous()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _lib() -> ctypes.CDLL:
    return build.library()  # type: ignore[return-value]


# -- the magnitude nonlinearity --------------------------------------------------------
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
        _check_tiles("relu_forward", "pairs", pairs, pool)
        b, h, w, c, m = pairs.shape[:5]
        return _relu_pool("relu_forward", 0, [pairs], (b, h, w), (c, m), scale, bias, eps, pool)
    _check_pairs("relu_forward", "pairs", pairs)
    streams = pairs.shape[-3] * pairs.shape[-2]
    scale_v = _stream_vector("relu_forward", "scale", scale, streams, 1.0)
    bias_v = _stream_vector("relu_forward", "bias", bias, streams, 0.0)
    positions = pairs.numel() // (2 * streams) if streams else 0
    out = pairs if inplace else torch.empty_like(pairs, memory_format=torch.contiguous_format)
    _lib().hnets_relu_forward(
        _ptr(pairs), _ptr(out), positions, streams, _ptr(scale_v), _ptr(bias_v), eps,
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def power_sum(pairs: torch.Tensor) -> torch.Tensor:
    """``sum |z|^2`` over all positions, per stream ``(C, M)``, float64."""
    _check_pairs("power_sum", "pairs", pairs)
    c, m = pairs.shape[-3], pairs.shape[-2]
    out = torch.empty(c, m, dtype=_F64, device="cpu")
    _lib().hnets_power(
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
    ``g s a + z (k a - corr)`` (see ``kernels.c``; ``None`` when ``write`` is
    false), the two others are sums over positions per stream ``(C, M)``, float64.
    With ``pool=k > 1`` the forward was pooled and ``grad`` is the pooled gradient.
    """
    fn = "relu_backward"
    if pool > 1:
        _check_tiles(fn, "pairs", pairs, pool)
        b, h, w, c, m = pairs.shape[:5]
        _check(fn, "grad", grad, (b, h // pool, w // pool, c, m, 2))
    else:
        _check_pairs(fn, "pairs", pairs)
        _check(fn, "grad", grad, pairs.shape)
        h = w = 1
    c, m = pairs.shape[-3], pairs.shape[-2]
    streams = c * m
    out = torch.empty_like(pairs, memory_format=torch.contiguous_format) if write else None
    scale_v = _stream_vector(fn, "scale", scale, streams, 1.0)
    bias_v = _stream_vector(fn, "bias", bias, streams, 0.0)
    corr_v = _stream_vector(fn, "corr", corr, streams, 0.0)
    grad_scale = torch.empty(c, m, dtype=_F64, device="cpu")
    grad_bias = torch.empty(c, m, dtype=_F64, device="cpu")
    _lib().hnets_relu_backward(
        _ptr(grad), _ptr(pairs), _ptr(out), pairs.numel() // (2 * streams), streams,
        _ptr(scale_v), _ptr(bias_v), eps, _ptr(corr_v), _ptr(grad_scale), _ptr(grad_bias),
        h, w, pool, torch.get_num_threads(),
    )  # fmt: skip
    return out, grad_scale, grad_bias


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
    pixel-major ``(B, H/pool, W/pool, C, M, 2)`` result, float32. Products in another
    layout are copied to channels-last first.
    """
    fn = "relu_products"
    c, m = streams
    if len(products) not in (3, 9):
        _refuse(fn, "products", f"are {len(products)} maps; expected Gauss's 3 or Karatsuba's 9")
    _check_rank(fn, "products[0]", products[0], 4, "(B, T, H, W)")
    b, t, h, w = products[0].shape
    per_map = c * m if len(products) == 3 else c  # Karatsuba's maps hold one order pair each
    if t != per_map or (len(products) == 9 and m != 2) or h % pool or w % pool:
        _refuse(
            fn, "products[0]", f"has shape {tuple(products[0].shape)}; expected (B, T, H, W) "
            f"with T={per_map} for {len(products)} maps of streams {streams} (9 maps: M=2), "
            f"H and W multiples of pool={pool}",
        )  # fmt: skip
    products = [p.contiguous(memory_format=_CL) for p in products]
    for k, p in enumerate(products):
        _check(fn, f"products[{k}]", p, (b, t, h, w), layout=_CL)
    kind = 1 if len(products) == 3 else 2
    return _relu_pool(fn, kind, products, (b, h, w), streams, scale, bias, eps, pool)


def _relu_pool(
    fn: str,
    kind: int,
    planes: list[torch.Tensor],
    positions: tuple[int, int, int],
    streams: tuple[int, int],
    scale: torch.Tensor | None,
    bias: torch.Tensor,
    eps: float,
    pool: int,
) -> torch.Tensor:
    """``hnets_relu_pool``: kind 0 interleaved pairs, 1 Gauss's or 2 Karatsuba's products.

    ``planes`` have been checked by the caller ``fn``."""
    (b, h, w), (c, m) = positions, streams
    scale_v = _stream_vector(fn, "scale", scale, c * m, 1.0)
    bias_v = _stream_vector(fn, "bias", bias, c * m, 0.0)
    out = torch.empty((b, h // pool, w // pool, c, m, 2), dtype=_F32, device="cpu")
    pointers = (ctypes.c_void_p * len(planes))(*(p.data_ptr() for p in planes))
    _lib().hnets_relu_pool(
        kind, pointers, _ptr(out), b, h, w, c * m, _ptr(scale_v), _ptr(bias_v), eps, pool,
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def tile_spread(grad: torch.Tensor, k: int) -> torch.Tensor:
    """Channels-last ``(B, N, h, w)`` -> ``(B, N, h k, w k)``: each value / k^2 over its tile."""
    _check_rank("tile_spread", "grad", grad, 4, "(B, N, h, w)")
    _check("tile_spread", "grad", grad, layout=_CL)
    if k < 1:
        _refuse("tile_spread", "k", f"is {k}; expected >= 1")
    b, n, h, w = grad.shape
    out = torch.empty((b, n, h * k, w * k), dtype=_F32, device="cpu", memory_format=_CL)
    _check("tile_spread", "out", out, layout=_CL)
    _lib().hnets_tile_spread(_ptr(grad), _ptr(out), b, h, w, n, k, torch.get_num_threads())
    return out


# -- the repacking around the convolution schemes (hnets.nn.schemes) --------------------
def split3(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Channels-last ``(B, 2S, H, W)`` images of interleaved pairs -> ``re``, ``im``, ``re + im``.

    Each output is a channels-last ``(B, S, H, W)`` tensor.
    """
    _check_rank("split3", "images", images, 4, "(B, 2S, H, W)")
    b, c2, h, w = images.shape
    if c2 % 2:
        _refuse("split3", "images", f"has {c2} channels; expected an even count (pairs)")
    _check("split3", "images", images, layout=_CL)
    shape = (b, c2 // 2, h, w)
    outs = [torch.empty(shape, dtype=_F32, device="cpu", memory_format=_CL) for _ in range(3)]
    for name, t in zip(("re", "im", "sum"), outs, strict=True):
        _check("split3", name, t, shape, layout=_CL)
    _lib().hnets_split3(
        _ptr(images), *(_ptr(t) for t in outs), images.numel() // 2, torch.get_num_threads()
    )
    return outs[0], outs[1], outs[2]


def merge3(
    p: torch.Tensor, q: torch.Tensor, r: torch.Tensor, sign_q: float, sign_r: float
) -> torch.Tensor:
    """Channels-last ``(B, T, H, W)`` maps -> interleaved ``(p + sign_q q, p + sign_r r)``.

    The result is a channels-last ``(B, 2T, H, W)`` tensor.
    """
    _check_rank("merge3", "p", p, 4, "(B, T, H, W)")
    for name, t in (("p", p), ("q", q), ("r", r)):
        _check("merge3", name, t, p.shape, layout=_CL)
    b, t, h, w = p.shape
    out = torch.empty((b, 2 * t, h, w), dtype=_F32, device="cpu", memory_format=_CL)
    _check("merge3", "out", out, layout=_CL)
    _lib().hnets_merge3(
        _ptr(p), _ptr(q), _ptr(r), _ptr(out), p.numel(), sign_q, sign_r, torch.get_num_threads()
    )
    return out


def _nine_planes(fn: str, name: str, images: torch.Tensor) -> list[torch.Tensor]:
    """``hnets_split9`` or ``hnets_gsplit9``: ``(B, 4C, H, W)`` -> nine ``(B, C, H, W)``."""
    _check_rank(fn, "images", images, 4, "(B, 4C, H, W)")
    b, c4, h, w = images.shape
    if c4 % 4:
        _refuse(fn, "images", f"has {c4} channels; expected a multiple of 4 (orders 0, 1)")
    _check(fn, "images", images, layout=_CL)
    planes = torch.empty((9, b, h, w, c4 // 4), dtype=_F32, device="cpu")
    getattr(_lib(), f"hnets_{name}")(
        _ptr(images), _ptr(planes), b * h * w, c4 // 4, torch.get_num_threads()
    )
    return [p.permute(0, 3, 1, 2) for p in planes.unbind(0)]


def _from_nine(fn: str, name: str, maps: list[torch.Tensor]) -> torch.Tensor:
    """``hnets_merge9`` or ``hnets_gmerge9``: nine ``(B, C, H, W)`` -> ``(B, 4C, H, W)``.

    Maps in another layout are copied to channels-last first."""
    if len(maps) != 9:
        _refuse(fn, "maps", f"are {len(maps)}; expected 9")
    _check_rank(fn, "maps[0]", maps[0], 4, "(B, C, H, W)")
    maps = [m.contiguous(memory_format=_CL) for m in maps]
    for k, m in enumerate(maps):
        _check(fn, f"maps[{k}]", m, maps[0].shape, layout=_CL)
    b, c, h, w = maps[0].shape
    out = torch.empty((b, 4 * c, h, w), dtype=_F32, device="cpu", memory_format=_CL)
    pointers = (ctypes.c_void_p * 9)(*(m.data_ptr() for m in maps))
    getattr(_lib(), f"hnets_{name}")(pointers, _ptr(out), b * h * w, c, torch.get_num_threads())
    return out


def split9(images: torch.Tensor) -> list[torch.Tensor]:
    """Channels-last ``(B, 4C, H, W)`` maps of orders 0 and 1 -> the nine real inputs of the
    Karatsuba-Gauss product (``kernels.c``), each a channels-last ``(B, C, H, W)``."""
    return _nine_planes("split9", "split9", images)


def merge9(products: list[torch.Tensor]) -> torch.Tensor:
    """The nine real products ``(B, T, H, W)`` -> channels-last ``(B, 4T, H, W)`` output."""
    return _from_nine("merge9", "merge9", products)


def split9_grad(grad: torch.Tensor) -> list[torch.Tensor]:
    """Backward of :func:`merge9`: gradients of the nine products (2nd of each three negated)."""
    return _nine_planes("split9_grad", "gsplit9", grad)


def merge9_grad(parts: list[torch.Tensor]) -> torch.Tensor:
    """Backward of :func:`split9` (with the 2nd of each three input gradients negated)."""
    return _from_nine("merge9_grad", "gmerge9", parts)


# -- filter synthesis (hnets.nn.synthesis) ---------------------------------------------
def _check_phase(
    fn: str, cos: torch.Tensor | None, sin: torch.Tensor | None, foi: tuple[int, int, int]
) -> None:
    """``cos`` and ``sin`` both ``None`` (no phase) or both ``(F, O, I)``."""
    if (cos is None) != (sin is None):
        _refuse(fn, "cos, sin", "must both be given or both be None")
    if cos is not None and sin is not None:
        _check(fn, "cos", cos, foi)
        _check(fn, "sin", sin, foi)


def synthesise(
    weight: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, layout: torch.Tensor
) -> torch.Tensor:
    """A filter bank ``(G, O, A, I, B)`` from ring weights ``(F, O, I, R)`` and a layout matrix.

    ``out[g, o, a, i, b] = sum_q c[o, i, q] layout[q, g, a, b]`` with the complex
    coefficients ``c[o, i, (f, r, p)] = weight[f, o, i, r] * (cos, sin)[p][f, o, i]``
    (``sin=None``: no phase, ``c = (weight, 0)``).
    """
    fn = "synthesise"
    _check_rank(fn, "weight", weight, 4, "(F, O, I, R)")
    _check(fn, "weight", weight)
    f, o, i, r = weight.shape
    _check_phase(fn, cos, sin, (f, o, i))
    _check_rank(fn, "layout", layout, 4, f"(q={f * r * 2}, G, A, B)")
    _, g, a, b = layout.shape
    _check(fn, "layout", layout, (f * r * 2, g, a, b))
    out = torch.empty((g, o, a, i, b), dtype=_F32, device="cpu")
    _lib().hnets_synthesise(
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
    fn = "synthesise_backward"
    _check_rank(fn, "weight", weight, 4, "(F, O, I, R)")
    _check(fn, "weight", weight)
    f, o, i, r = weight.shape
    _check_phase(fn, cos, sin, (f, o, i))
    _check_rank(fn, "layout_t", layout_t, 4, f"(G, A, B, q={f * r * 2})")
    g, a, b, _ = layout_t.shape
    _check(fn, "layout_t", layout_t, (g, a, b, f * r * 2))
    _check(fn, "grad", grad, (g, o, a, i, b))
    grad_w = torch.empty((f, o, i, r), dtype=_F32, device="cpu")
    grad_phase = None if sin is None else torch.empty((f, o, i), dtype=_F32, device="cpu")
    _lib().hnets_synthesise_backward(
        _ptr(grad), _ptr(weight), _ptr(cos), _ptr(sin), _ptr(layout_t), _ptr(grad_w),
        _ptr(grad_phase), f, o, i, r, g, a, b, torch.get_num_threads(),
    )  # fmt: skip
    return grad_w, grad_phase
