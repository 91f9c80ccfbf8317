"""Mean pooling of harmonic maps: :class:`HAvgPool2d`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .functional import check_harmonic

__all__ = ["HAvgPool2d"]


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
        check_harmonic(z, channels=None, orders=None, where="HAvgPool2d")
        b, c, m, two, h, w = z.shape
        pooled = F.avg_pool2d(z.reshape(b, c * m * two, h, w), self.kernel_size, self.stride)
        return pooled.view(b, c, m, two, *pooled.shape[-2:])

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
