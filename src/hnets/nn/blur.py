"""A Gaussian low-pass on the input, for inference on crisp images.

Every image a model of the recipe trains on has been resampled (the rotation protocol
rotates the stored images with bilinear interpolation, and the augmentation rotates
them again), which blurs it; a user's photographed or scanned image is crisp. Models
read such images about half a point worse (measured in docs/results.md, *Crisp
inputs*). :class:`EvalBlur` closes that gap at inference: in eval mode it
smooths the input by a Gaussian of ``sigma`` pixels, the order of blur that one
bilinear resampling at a random angle leaves; in training mode it is the identity, so
training is untouched.

The kernel is separable and symmetric, so the blur commutes exactly with quarter
turns (and with flips); with a zero border it keeps a zero background zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EvalBlur", "gaussian_blur", "gaussian_kernel"]


def _finite_nonnegative(sigma: object) -> bool:
    return isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0


def gaussian_kernel(sigma: float, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 1-D Gaussian ``exp(-r^2 / (2 sigma^2))`` over ``r = -R..R``, summing to 1.

    ``R = max(1, ceil(3 sigma))``.

    Raises:
        ValueError: ``sigma`` not a finite number > 0.
    """
    if not (_finite_nonnegative(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    radius = max(1, math.ceil(3 * sigma))
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(r**2) / (2 * sigma * sigma))
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Blur each channel of ``x`` ``(B, C, H, W)`` by the separable 1-D ``kernel`` (zero border).

    The output has ``x``'s shape, dtype and memory format.
    """
    if x.dim() != 4:
        raise ValueError(f"gaussian_blur needs (B, C, H, W) images, got shape {list(x.shape)}")
    c, r = x.shape[1], kernel.numel() // 2
    k = kernel.to(dtype=x.dtype, device=x.device)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)


class EvalBlur(nn.Module):
    """Gaussian low-pass of ``sigma`` pixels in eval mode; the identity in training mode.

    ``sigma = 0`` is the identity in both modes. The kernel is a non-persistent
    buffer: a model's state dict is the same with or without it.

    Shape:
        ``(B, C, H, W)`` -> the same.
    """

    def __init__(self, sigma: float = 0.0) -> None:
        super().__init__()
        if not _finite_nonnegative(sigma):
            raise ValueError(f"eval_blur must be a finite number >= 0 (pixels), got {sigma!r}")
        self.sigma = float(sigma)
        kernel = gaussian_kernel(self.sigma) if self.sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.sigma == 0.0:
            return x
        return gaussian_blur(x, self.kernel)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, eval only"
