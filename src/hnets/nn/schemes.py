r"""How :class:`~hnets.nn.HConv2d` turns images and filter banks into outputs: its schemes.

A harmonic convolution from ``S`` complex input streams (channels x rotation orders)
to ``T`` output streams is one complex convolution ``Y = W * X``. Every scheme here
takes the input as channels-last real images ``(B, 2S, H, W)`` whose channels are
interleaved (real, imaginary) pairs (:func:`as_images`), and returns the output the
same way, ``(B, 2T, H_out, W_out)`` (:func:`as_harmonic` views it as a harmonic map).
They differ in how many real convolutions they run, and so in arithmetic; all give
the same result up to float round-off. Which one runs for ``impl="auto"`` is decided by
:mod:`hnets.nn.dispatch`; the banks each one reads are synthesised from the layer's
parameters with :mod:`hnets.nn.synthesis`.

``"dense"`` (and ``"real"``)
    One real convolution with the dense bank ``(2T, 2S, k, k)``, whose 2 x 2 blocks are
    ``[[W_r, -W_i], [W_i, W_r]]``: the complex product written out, the reference.
    Full arithmetic (4 real products per complex one) but a single wide convolution,
    which is the fastest for few streams. ``"real"`` is the first layer fed real
    images ``(B, S, H, W)``: the bank's columns that read real parts, half the work.

``"dense-nchw"``
    The dense scheme with the convolution itself run in the standard (NCHW) memory
    layout: input and bank copied to NCHW, the output copied back to channels-last, the
    layout every other hnets layer reads. oneDNN's NCHW and channels-last kernels rank
    differently on different CPUs (channels-last wins on an AVX-512 Xeon, loses on an
    AVX2 EPYC), so ``hnets tune`` times it too; the fixed table never picks it. Gauss's and
    Karatsuba's native (de)interleaving kernels work on channels-last planes and have
    no NCHW form.

``"gauss"`` (:class:`GaussConv`, :func:`gauss_torch`)
    Gauss's trick, three real products per complex one:
    ``P1 = W_r (X_r + X_i)``, ``P2 = (W_r + W_i) X_i``, ``P3 = (W_i - W_r) X_r``, then
    ``Y_r = P1 - P2`` and ``Y_i = P1 + P3``. Three half-width convolutions
    (``S -> T`` each): 3/4 of the dense arithmetic. Shared: the input sum
    ``X_r + X_i`` and ``W_r`` feed both output parts through ``P1``. For many streams.

``"karatsuba"`` (:class:`KaratsubaConv`, :func:`karatsuba_torch`)
    Orders 0 and 1 on both sides only. Output order ``m_o`` reads input order ``m_i``
    through the filter of order ``m_o - m_i``, so ``y_0 = W_0 x_0 + W_{-1} x_1`` and
    ``y_1 = W_1 x_0 + W_0 x_1``: the order-0 filter serves both diagonal pairs. With
    ``A = W_0 (x_0 + x_1)``, ``B = (W_{-1} - W_0) x_1`` and ``C = (W_1 - W_0) x_0``,
    ``y_0 = A + B`` and ``y_1 = A + C`` (Karatsuba's trick): three complex products
    instead of four, each by Gauss's three real ones. Nine quarter-width convolutions
    (``C -> T`` channels each, against ``2C -> 2T`` streams): 9/16 of the dense
    arithmetic. Shared: ``A`` feeds both orders. For wide layers of orders 0..1.

On float32 CPU tensors the (de)interleaving and the sums around Gauss's and
Karatsuba's products are one pass each of the native kernels (:mod:`hnets._native`)
and the autograd Functions call ``convolution_backward`` directly;
elsewhere (other devices and dtypes, ``torch.compile``, gradcheck) :func:`gauss_torch`
and :func:`karatsuba_torch` compute the same products with PyTorch ops.
:func:`convolve` picks the path.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import _native

__all__ = [
    "SCHEMES",
    "BANK_OF",
    "NATIVE_SCHEMES",
    "GaussConv",
    "KaratsubaConv",
    "as_harmonic",
    "as_images",
    "convolve",
    "gauss_torch",
    "karatsuba_torch",
]


def as_images(z: torch.Tensor) -> torch.Tensor:
    """Harmonic map ``(B, C, M, 2, H, W)`` -> channels-last real images ``(B, C*M*2, H, W)``.

    A free view when ``z`` came from an hnets layer (their outputs are stored
    channels-last: memory ordered ``(B, H, W, C, M, 2)``), one copy otherwise.
    Channels-last convolutions run about 1.3x faster than NCHW ones on x86 CPUs.
    """
    b, c, m, two, h, w = z.shape
    return z.reshape(b, c * m * two, h, w).contiguous(memory_format=torch.channels_last)


def as_harmonic(images: torch.Tensor, channels: int, orders: int) -> torch.Tensor:
    """Inverse of :func:`as_images` (a view)."""
    b, _, h, w = images.shape
    return images.view(b, channels, orders, 2, h, w)


def _conv_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int,
    padding: int,
    need: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``conv2d(x, w)`` for ``x`` and ``w`` (each only where ``need`` says)."""
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad, x, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1,
        [need[0], need[1], False],
    )  # fmt: skip
    return gx, gw


class GaussConv(torch.autograd.Function):
    """Gauss's three real convolutions on interleaved complex pairs, with fused repacking.

    Input: channels-last images ``(B, 2S, H, W)`` whose channels are (real, imaginary)
    pairs; output likewise with ``2T`` channels. Weights ``(W_r, W_r + W_i, W_i - W_r)``,
    each ``(T, S, k, k)``. With ``P1 = (X_r + X_i) * W_r``, ``P2 = X_i * (W_r + W_i)``,
    ``P3 = X_r * (W_i - W_r)``: real part ``P1 - P2``, imaginary part ``P1 + P3``. The
    (de)interleaving and the sums are single passes of the native kernels
    (:func:`hnets._native.split3`, :func:`hnets._native.merge3`); the backward calls
    ``convolution_backward`` directly. Float32 CPU tensors only (see :func:`convolve`).
    """

    @staticmethod
    def products(images, weights, stride, padding):  # noqa: ANN001, ANN205
        """The three real products ``P1, P2, P3`` and the three real inputs."""
        w_re, w_sum, w_diff = weights
        x_re, x_im, x_sum = _native.split3(images)
        conv = partial(F.conv2d, stride=stride, padding=padding)
        cl = torch.channels_last
        prods = [conv(a, w).contiguous(memory_format=cl) for a, w in
                 ((x_sum, w_re), (x_im, w_sum), (x_re, w_diff))]  # fmt: skip
        return prods, (x_re, x_im, x_sum)

    @staticmethod
    def run(images, weights, stride, padding):  # noqa: ANN001, ANN205
        """The forward; returns the output and the three real inputs."""
        prods, inputs = GaussConv.products(images, weights, stride, padding)
        return _native.merge3(*prods, -1.0, 1.0), inputs

    @staticmethod
    def forward(ctx, images, stride, padding, *weights):  # noqa: ANN001, ANN205
        out, inputs = GaussConv.run(images, weights, stride, padding)
        ctx.save_for_backward(*inputs, *weights)
        ctx.conv_args = (stride, padding)
        return out

    @staticmethod
    @once_differentiable  # the native repacking is not recorded: no double backward
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x_re, x_im, x_sum, w_re, w_sum, w_diff = ctx.saved_tensors
        stride, padding = ctx.conv_args
        cl = torch.channels_last
        grad = grad.contiguous(memory_format=cl)
        # d/dP1 = g_re + g_im, d/dP2 = -g_re, d/dP3 = g_im
        g_re, g_im, g_sum = _native.split3(grad)
        need_x = ctx.needs_input_grad[0]
        back = partial(_conv_backward, stride=stride, padding=padding)
        a_x, a_w = back(g_sum, x_sum, w_re, need=(need_x, ctx.needs_input_grad[3]))
        b_x, b_w = back(g_re, x_im, w_sum, need=(need_x, ctx.needs_input_grad[4]))
        c_x, c_w = back(g_im, x_re, w_diff, need=(need_x, ctx.needs_input_grad[5]))
        grad_images = None
        if need_x:
            # dX_r = A + C, dX_i = A - B
            parts = (t.contiguous(memory_format=cl) for t in (a_x, c_x, b_x))
            grad_images = _native.merge3(*parts, 1.0, -1.0)
        return grad_images, None, None, a_w, None if b_w is None else -b_w, c_w


class KaratsubaConv(torch.autograd.Function):
    """Orders 0 and 1 in and out: three complex products instead of four, nine real ones.

    Input: channels-last images ``(B, 4C, H, W)`` (channel, order, real/imaginary);
    output likewise with ``4T`` channels. Weights: for ``K = W_0``, ``W_{-1} - W_0``,
    ``W_1 - W_0`` in turn, Gauss's ``(K_r, K_r + K_i, K_i - K_r)``, each ``(T, C, k, k)``.
    With ``A = W_0 (x_0 + x_1)``, ``B = (W_{-1} - W_0) x_1`` and
    ``C = (W_1 - W_0) x_0`` the outputs are ``y_0 = A + B`` and ``y_1 = A + C``. The
    (de)interleaving is one native pass each way (:func:`hnets._native.split9`,
    :func:`hnets._native.merge9`). Float32 CPU tensors only (see :func:`convolve`).
    """

    @staticmethod
    def products(images, weights, stride, padding):  # noqa: ANN001, ANN205
        """The nine real products and the nine real inputs."""
        inputs = _native.split9(images)
        conv = partial(F.conv2d, stride=stride, padding=padding)
        return [conv(u, wk) for u, wk in zip(inputs, weights, strict=True)], inputs

    @staticmethod
    def run(images, weights, stride, padding):  # noqa: ANN001, ANN205
        """The forward; returns the output and the nine real inputs."""
        products, inputs = KaratsubaConv.products(images, weights, stride, padding)
        return _native.merge9(products), inputs

    @staticmethod
    def forward(ctx, images, stride, padding, *weights):  # noqa: ANN001, ANN205
        out, inputs = KaratsubaConv.run(images, weights, stride, padding)
        ctx.save_for_backward(*inputs, *weights)
        ctx.conv_args = (stride, padding)
        return out

    @staticmethod
    @once_differentiable  # the native repacking is not recorded: no double backward
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        saved = ctx.saved_tensors
        inputs, weights = saved[:9], saved[9:]
        stride, padding = ctx.conv_args
        grads = _native.split9_grad(grad.contiguous(memory_format=torch.channels_last))
        need_x = ctx.needs_input_grad[0]
        grad_inputs, grad_weights = [], []
        for k, (g, x, w) in enumerate(zip(grads, inputs, weights, strict=True)):
            need = (need_x, ctx.needs_input_grad[3 + k])
            gx, gw = _conv_backward(g, x, w, stride, padding, need)
            grad_inputs.append(gx)
            grad_weights.append(-gw if gw is not None and k % 3 == 1 else gw)
        grad_images = _native.merge9_grad(grad_inputs) if need_x else None
        return (grad_images, None, None, *grad_weights)


#: The schemes with native (de)interleaving, by ``impl`` name.
NATIVE_SCHEMES: dict[str, type[GaussConv] | type[KaratsubaConv]] = {
    "gauss": GaussConv,
    "karatsuba": KaratsubaConv,
}


def gauss_torch(images: torch.Tensor, weights: list[torch.Tensor], conv) -> torch.Tensor:  # noqa: ANN001
    """Gauss's three products with PyTorch ops (other devices and dtypes, gradcheck)."""
    b, _, h, w = images.shape
    parts = images.view(b, -1, 2, h, w)
    x_re = parts[:, :, 0].contiguous(memory_format=torch.channels_last)
    x_im = parts[:, :, 1].contiguous(memory_format=torch.channels_last)
    w_re, w_sum, w_diff = weights
    p = conv(x_re + x_im, w_re)
    out = torch.stack([p - conv(x_im, w_sum), p + conv(x_re, w_diff)], dim=2)
    return out.flatten(1, 2).contiguous(memory_format=torch.channels_last)


def karatsuba_torch(images: torch.Tensor, weights: list[torch.Tensor], conv) -> torch.Tensor:  # noqa: ANN001
    """Karatsuba's nine products with PyTorch ops (other devices and dtypes, gradcheck)."""
    b, _, h, w = images.shape
    x = images.view(b, -1, 2, 2, h, w)
    x0r, x0i, x1r, x1i = x[:, :, 0, 0], x[:, :, 0, 1], x[:, :, 1, 0], x[:, :, 1, 1]
    sr, si = x0r + x1r, x0i + x1i
    inputs = [sr + si, si, sr, x1r + x1i, x1i, x1r, x0r + x0i, x0i, x0r]
    p = [conv(u, wk) for u, wk in zip(inputs, weights, strict=True)]
    a, b_, c = (p[0] - p[1], p[0] + p[2]), (p[3] - p[4], p[3] + p[5]), (p[6] - p[7], p[6] + p[8])
    out = torch.stack([a[0] + b_[0], a[1] + b_[1], a[0] + c[0], a[1] + c[1]], dim=2)
    return out.flatten(1, 2).contiguous(memory_format=torch.channels_last)


#: Every scheme :class:`~hnets.nn.HConv2d` can run (its ``impl=`` values besides "auto").
SCHEMES = ("dense", "dense-nchw", "gauss", "karatsuba")
#: Schemes that read another scheme's filter bank.
BANK_OF = {"dense-nchw": "dense"}


def convolve(
    images: torch.Tensor, impl: str, weights: list[torch.Tensor], stride: int, padding: int
) -> torch.Tensor:
    """The convolution of channels-last ``images`` by scheme ``impl`` with its banks.

    ``impl`` is ``"dense"``, ``"dense-nchw"`` or ``"real"`` (one bank), ``"gauss"`` (three) or
    ``"karatsuba"`` (nine), as :class:`~hnets.nn.HConv2d` synthesises them. The native
    path where the kernels can run on ``images`` (float32, CPU, eager; the weights may
    have any layout), recorded by autograd only where a gradient is wanted; else the
    PyTorch ops.
    """
    conv = partial(F.conv2d, stride=stride, padding=padding)
    if impl in ("dense", "real"):
        return conv(images, weights[0])
    if impl == "dense-nchw":
        out = conv(images.contiguous(), weights[0].contiguous())
        return out.contiguous(memory_format=torch.channels_last)
    if _native.usable(images, memory_format=torch.channels_last):
        scheme = NATIVE_SCHEMES[impl]
        if torch.is_grad_enabled() and (
            images.requires_grad or any(w.requires_grad for w in weights)
        ):
            return scheme.apply(images, stride, padding, *weights)
        return scheme.run(images, weights, stride, padding)[0]
    if impl == "karatsuba":
        return karatsuba_torch(images, weights, conv)
    return gauss_torch(images, weights, conv)
