r"""Functions on harmonic feature maps.

**Layout.** A harmonic feature map is a real tensor of shape
``(batch, channels, orders, 2, height, width)``: ``orders`` holds rotation orders
``0..max_order`` and dimension 3 the real and imaginary parts of each complex
stream. Order :math:`m` transforms under a counter-clockwise rotation of the input
by :math:`\theta` (``torch.rot90(x, 1, dims=(-2, -1))`` is :math:`\theta = \pi/2`) as

.. math::

    z_m \;\mapsto\; e^{i m \theta}\, (z_m \circ R_\theta^{-1}),

i.e. the map turns with the image and its phase advances by :math:`m\theta`.
Magnitudes :math:`|z_m|` are therefore rotation *equivariant* maps that are
*invariant* pointwise, which is what the read-out uses.
"""

from __future__ import annotations

import torch

__all__ = [
    "lift",
    "magnitude",
    "rot90_harmonic",
    "check_harmonic",
]


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

    hnets layers store harmonic maps channels-last (memory ordered
    ``(B, H, W, C, M, 2)``), so pointwise layers work on contiguous memory with each
    complex pair adjacent; a standard-strided input is copied once.
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
    return scale.unsqueeze(-1).expand(*scale.shape, 2).contiguous()


def lift(x: torch.Tensor) -> torch.Tensor:
    """Real maps ``(B, C, H, W)`` -> order-0 harmonic maps ``(B, C, 1, 2, H, W)`` (real)."""
    if x.dim() != 4:
        raise ValueError(
            f"lift expects real maps shaped (batch, channels, height, width); got {tuple(x.shape)}"
        )
    return torch.stack([x, torch.zeros_like(x)], dim=2).unsqueeze(2)


def magnitude(z: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``|z|`` of every stream: ``(B, C, M, 2, H, W)`` -> ``(B, C, M, H, W)``, rotation invariant.

    ``eps`` is added under the square root (use a small positive value where a
    gradient at ``z = 0`` must stay finite).
    """
    check_harmonic(z, channels=None, orders=None, where="magnitude")
    return (z.square().sum(dim=3) + eps).sqrt()


def _times_i_power(z: torch.Tensor, power: int) -> torch.Tensor:
    """Multiply complex pairs (dim 3) by ``i**power`` exactly (swaps and sign flips only)."""
    re, im = z.unbind(dim=3)
    power %= 4
    if power == 0:
        return z
    if power == 1:
        return torch.stack([-im, re], dim=3)
    if power == 2:
        return torch.stack([-re, -im], dim=3)
    return torch.stack([im, -re], dim=3)


def rot90_harmonic(z: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The action of a ``k * 90`` degree counter-clockwise rotation on a harmonic map.

    Rotates every map with :func:`torch.rot90` and multiplies order ``m`` by
    :math:`e^{i m k \\pi/2} = i^{mk}`, exactly. An equivariant layer ``f`` satisfies
    ``f(rot90_harmonic(z, k)) == rot90_harmonic(f(z), k)``.
    """
    check_harmonic(z, channels=None, orders=None, where="rot90_harmonic")
    spun = torch.rot90(z, k, dims=(-2, -1))
    return torch.cat(
        [_times_i_power(spun[:, :, m : m + 1], m * k) for m in range(z.shape[2])], dim=2
    )
