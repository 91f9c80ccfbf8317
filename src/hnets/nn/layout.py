r"""The harmonic feature-map layout and its memory order: shapes, checks and views.

A harmonic feature map is a real tensor of shape ``(batch, channels, orders, 2,
height, width)``: ``orders`` holds rotation orders ``0..max_order`` and dimension 3
the real and imaginary parts of each complex stream. hnets layers store these maps
*pixel-major* in memory, ordered ``(B, H, W, C, M, 2)``, so pointwise operations run
over contiguous memory with each complex pair adjacent; :func:`to_pixel_major` and
:func:`from_pixel_major` move between the two views (free for hnets' own outputs).

Nothing here computes anything of the maths; :mod:`hnets.nn.functional` does.
"""

from __future__ import annotations

import torch

__all__ = ["check_harmonic", "to_pixel_major", "from_pixel_major", "pair_dot", "per_pair"]


def check_harmonic(
    z: torch.Tensor, *, channels: int | None, orders: int | None, where: str
) -> None:
    """Raise a ``ValueError`` naming ``where`` unless ``z`` is a harmonic map of that type."""
    if z.dim() != 6 or z.shape[3] != 2:
        raise ValueError(
            f"{where} expects a harmonic map shaped (batch, channels, orders, 2, height, width); "
            f"got a tensor of shape {tuple(z.shape)} (use hnets.lift() on real images)"
        )
    if channels is not None and z.shape[1] != channels:
        raise ValueError(
            f"{where} expects {channels} channels; got {z.shape[1]} ({tuple(z.shape)})"
        )
    if orders is not None and z.shape[2] != orders:
        raise ValueError(
            f"{where} expects {orders} rotation orders (0..{orders - 1}); got {z.shape[2]} "
            f"({tuple(z.shape)})"
        )


def to_pixel_major(z: torch.Tensor) -> torch.Tensor:
    """``(B, C, M, 2, H, W)`` -> contiguous ``(B, H, W, C, M, 2)``: a free view for hnets outputs.

    A standard-strided input is copied once.
    """
    return z.permute(0, 4, 5, 1, 2, 3).contiguous()


def from_pixel_major(p: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_pixel_major` (a view)."""
    return p.permute(0, 3, 4, 5, 1, 2)


def pair_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a_re * b_re + a_im * b_im`` over a trailing pair dimension (faster than a sum)."""
    return torch.addcmul(a[..., 0] * b[..., 0], a[..., 1], b[..., 1])


def per_pair(scale: torch.Tensor) -> torch.Tensor:
    """A factor per stream ``(C, M)`` -> ``(C, M, 2)``, contiguous, to multiply pixel-major pairs.

    The same products as broadcasting ``scale.unsqueeze(-1)``, but several times faster
    on CPU, where broadcasting along the innermost (size-2) dimension is a slow path.
    """
    return torch.stack([scale, scale], dim=-1)
