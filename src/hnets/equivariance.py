r"""Measuring rotation equivariance of layers and models.

For a layer :math:`f` on harmonic maps, exact equivariance to a counter-clockwise
rotation by :math:`k \cdot 90` degrees means
``f(rot90_harmonic(z, k)) == rot90_harmonic(f(z), k)``; for a model from images to
logits it means invariance, ``f(rot90(x, k)) == f(x)``. For other angles the pixel
grid cannot be rotated exactly; :func:`rotate_harmonic` resamples with bilinear
interpolation (:func:`hnets.data.rotate_images`), and errors are measured inside the
inscribed disc, where rotated
content stays inside the image.
"""

from __future__ import annotations

import torch
from torch import nn

from .data.transforms import rotate_images
from .nn.functional import check_harmonic, rot90_harmonic

__all__ = [
    "rot90_error",
    "rotate_harmonic",
    "disc_mask",
    "relative_error",
]


def rot90_error(module: nn.Module, x: torch.Tensor, k: int = 1) -> float:
    """Largest absolute deviation from exact equivariance (or invariance) under ``k`` quarter turns.

    ``x`` is either a harmonic map ``(B, C, M, 2, H, W)`` (then the output must be a
    harmonic map too, compared with :func:`rot90_harmonic`) or images ``(B, C, H, W)``
    (then the output is compared directly: invariance of logits or features).
    """
    with torch.no_grad():
        if x.dim() == 6:
            out = module(x)
            turned = module(rot90_harmonic(x, k))
            return (turned - rot90_harmonic(out, k)).abs().max().item()
        out = module(x)
        turned = module(torch.rot90(x, k, dims=(-2, -1)))
        if out.dim() == 4:  # an image-shaped output must turn with the input
            out = torch.rot90(out, k, dims=(-2, -1))
        return (turned - out).abs().max().item()


def rotate_harmonic(z: torch.Tensor, angle: float) -> torch.Tensor:
    r"""A rotation by ``angle`` acting on a harmonic map.

    Resamples every map, then multiplies order :math:`m` by :math:`e^{im\theta}`.
    """
    check_harmonic(z, channels=None, orders=None, where="rotate_harmonic")
    b, c, m, two, h, w = z.shape
    spun = rotate_images(z.reshape(b, c * m * two, h, w), angle).view(b, c, m, two, h, w)
    orders = torch.arange(m, dtype=z.dtype, device=z.device).view(1, 1, m, 1, 1)
    cos, sin = torch.cos(orders * angle), torch.sin(orders * angle)
    re, im = spun[:, :, :, 0], spun[:, :, :, 1]
    return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=3)


def disc_mask(
    size: int, radius: float | None = None, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean ``(size, size)`` mask: pixels within ``radius`` (default ``size/2 - 1``)."""
    radius = size / 2 - 1 if radius is None else radius
    coords = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    return coords.view(-1, 1) ** 2 + coords.view(1, -1) ** 2 <= radius**2


def relative_error(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``||a - b|| / ||b||`` over the masked positions (the last two dimensions)."""
    if mask is not None:
        a, b = a[..., mask], b[..., mask]
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
