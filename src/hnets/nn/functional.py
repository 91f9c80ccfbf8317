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

**One definition of each operation.** Every operation the layers run is a function
here, which the modules, the fused blocks, the inference path and :mod:`hnets.export`
all call: :func:`lift`, :func:`magnitude`, :func:`magnitude_relu` and
:func:`batch_norm_magnitude_relu` (defined with their accelerated forms in
:mod:`hnets.nn.fused_relu`, whose :func:`~hnets.nn.fused_relu.relu_pairs` is the formula
in PyTorch ops), :func:`mean_pool` and :func:`invariant_readout`.
"""

from __future__ import annotations

import torch

from .fused_relu import batch_norm_magnitude_relu, magnitude_relu
from .layout import check_harmonic
from .pooling import mean_pool

__all__ = [
    "lift",
    "magnitude",
    "magnitude_relu",
    "batch_norm_magnitude_relu",
    "mean_pool",
    "invariant_readout",
    "rot90_harmonic",
    "check_harmonic",
]


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


def invariant_readout(z: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Rotation-invariant class scores: magnitudes summed over orders, averaged over space.

    ``(B, K, M, 2, H, W)`` -> ``(B, K)``: :math:`\sum_m |z_{k,m}|_\epsilon` averaged over
    positions, plus ``bias`` ``(K,)``. Plain PyTorch ops (scriptable, exportable).
    """
    mag = (z.square().sum(dim=3) + eps).sqrt()  # (B, K, M, H, W)
    return mag.sum(dim=2).mean(dim=(-2, -1)) + bias


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
