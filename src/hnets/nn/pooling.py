"""Mean pooling of harmonic maps: :class:`HAvgPool2d`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _native
from .layout import check_harmonic

__all__ = ["HAvgPool2d", "mean_pool"]


class _TiledMeanPool(torch.autograd.Function):
    """``F.avg_pool2d`` with non-overlapping windows that tile the input, saving nothing.

    Autograd's ``avg_pool2d`` keeps its whole input alive for the backward (it only needs
    the shape); here the backward spreads each output gradient over its ``k x k``
    window directly, in the channels-last layout hnets maps use.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int) -> torch.Tensor:  # noqa: ANN001
        ctx.k = k
        return F.avg_pool2d(x, k, k)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        k = ctx.k
        if _native.usable(grad, memory_format=torch.channels_last):
            return _native.tile_spread(grad, k), None
        b, n, h, w = grad.shape
        g = (grad / (k * k)).permute(0, 2, 3, 1)  # (B, h, w, N)
        g = g[:, :, None, :, None, :].expand(b, h, k, w, k, n).reshape(b, h * k, w * k, n)
        return g.permute(0, 3, 1, 2), None


def mean_pool(z: torch.Tensor, kernel_size: int, stride: int | None = None) -> torch.Tensor:
    """Mean pooling of every real and imaginary map of a harmonic map (see :class:`HAvgPool2d`).

    Windows that tile the maps (``stride == kernel_size`` dividing ``H`` and ``W``) keep
    nothing alive for the backward.
    """
    check_harmonic(z, channels=None, orders=None, where="mean_pool")
    k = kernel_size
    stride = k if stride is None else stride
    b, c, m, two, h, w = z.shape
    x = z.reshape(b, c * m * two, h, w)
    if stride == k and h % k == 0 and w % k == 0 and torch.is_grad_enabled():
        pooled = _TiledMeanPool.apply(x, k)
    else:
        pooled = F.avg_pool2d(x, k, stride)
    return pooled.view(b, c, m, two, *pooled.shape[-2:])


class HAvgPool2d(nn.Module):
    """Mean pooling of every real and imaginary map (a linear map, so it keeps phases).

    Pooling commutes with 90-degree rotations when the pooling windows tile the
    input exactly (``H`` and ``W`` multiples of ``stride`` with ``kernel_size ==
    stride``, the usual 2x2 case on 28 -> 14 -> 7).

    Shape:
        ``(B, C, M, 2, H, W)`` -> ``(B, C, M, 2, H_out, W_out)``.
    """

    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return mean_pool(z, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
