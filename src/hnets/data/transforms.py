"""Image rotation about the pixel-grid centre, and random-rotation augmentation.

Convention: a positive angle (radians) turns the image counter-clockwise *as
displayed* (row 0 at the top), the same direction as
``torch.rot90(x, 1, dims=(-2, -1))``. The centre of rotation is the centre of the
pixel grid, ``((H - 1) / 2, (W - 1) / 2)`` in (row, column) pixel coordinates.
An output pixel at offset ``(dx, dy)`` from the centre (column, row; rows grow
downwards) reads the input at

    x_in = cos(a) dx - sin(a) dy,    y_in = sin(a) dx + cos(a) dy

with bilinear interpolation and zeros outside the image. Everything is plain
element-wise torch arithmetic and ``grid_sample``, so it runs on any device and is
deterministic on the CPU whatever the batch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rotate_images", "random_rotate_batch", "RandomRotation"]


def rotate_images(images: Tensor, angles: Tensor | float) -> Tensor:
    """Rotate each image counter-clockwise (as displayed) by its angle about the centre.

    Args:
        images: ``(B, C, H, W)`` or ``(B, H, W)`` floating-point images, ``H, W >= 2``.
        angles: ``(B,)`` angles in radians, or one angle (a float or 0-d tensor)
            for the whole batch.

    Returns:
        The rotated images, same shape, dtype and device as ``images``; bilinear
        interpolation, zero fill outside the original image.
    """
    if images.dim() not in (3, 4):
        raise ValueError(f"images must be (B, C, H, W) or (B, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got {images.dtype}")
    squeeze = images.dim() == 3
    x = images.unsqueeze(1) if squeeze else images
    batch, _, height, width = x.shape
    if height < 2 or width < 2:
        raise ValueError(f"images must be at least 2x2, got {height}x{width}")
    grid = _rotation_grid(_batch_angles(angles, batch, x.device), height, width).to(x.dtype)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.squeeze(1) if squeeze else out


def random_rotate_batch(
    images: Tensor,
    generator: torch.Generator | None = None,
    *,
    return_angles: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Rotate every image of a batch by its own angle drawn uniformly from ``[0, 2 pi)``.

    Args:
        images: ``(B, C, H, W)`` or ``(B, H, W)`` images.
        generator: the random generator (its device is where the angles are drawn);
            ``None`` uses torch's global generator.
        return_angles: also return the ``(B,)`` angles used.

    Returns:
        The rotated batch (and the angles, on the images' device).
    """
    angles = _uniform_angles(images.shape[0], generator, images.device)
    rotated = rotate_images(images, angles)
    return (rotated, angles) if return_angles else rotated


class RandomRotation(torch.nn.Module):
    """Augmentation: rotate each image of a batch, with probability ``p``, by a random angle.

    Angles are uniform in ``[0, 2 pi)``; images not picked are returned unchanged.
    Works on ``(B, C, H, W)`` or ``(B, H, W)`` batches on any device.

    Args:
        p: probability that a given image is rotated.
        generator: optional random generator for reproducible augmentation.
    """

    def __init__(self, p: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)
        self.generator = generator

    def forward(self, images: Tensor) -> Tensor:
        """Shape: ``(B, C, H, W)`` or ``(B, H, W)`` in, same shape out."""
        if self.p == 0.0 or images.shape[0] == 0:
            return images
        rotated = random_rotate_batch(images, self.generator)
        if self.p == 1.0:
            return rotated
        pick = _uniform(images.shape[0], self.generator, images.device) < self.p
        pick = pick.view(-1, *([1] * (images.dim() - 1)))
        return torch.where(pick, rotated, images)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _batch_angles(angles: Tensor | float, batch: int, device: torch.device) -> Tensor:
    dtype = _grid_dtype(device)
    if isinstance(angles, Tensor):
        angles = angles.to(device=device, dtype=dtype)
        if angles.dim() == 0:
            return angles.expand(batch)
        if angles.shape != (batch,):
            raise ValueError(f"angles must be ({batch},) or a scalar, got {tuple(angles.shape)}")
        return angles
    return torch.full((batch,), float(angles), dtype=dtype, device=device)


def _rotation_grid(angles: Tensor, height: int, width: int) -> Tensor:
    """``(B, H, W, 2)`` sampling grid in ``grid_sample``'s normalised (x, y) coordinates."""
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    dy = (torch.arange(height, dtype=angles.dtype, device=angles.device) - cy).view(1, -1, 1)
    dx = (torch.arange(width, dtype=angles.dtype, device=angles.device) - cx).view(1, 1, -1)
    cos = torch.cos(angles).view(-1, 1, 1)
    sin = torch.sin(angles).view(-1, 1, 1)
    x_in = cos * dx - sin * dy
    y_in = sin * dx + cos * dy
    # align_corners=True: -1 and +1 are the centres of the first and last pixels.
    return torch.stack((x_in / cx, y_in / cy), dim=-1)


def _grid_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps multiples of pi/2 exact to ~1e-15; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    where = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=where).to(device)


def _uniform_angles(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return _uniform(n, generator, device) * (2.0 * math.pi)
