r"""Module forms of the functions between images, harmonic maps and outputs.

:func:`~hnets.nn.functional.lift`, :func:`~hnets.nn.functional.magnitude` and
:func:`~hnets.nn.functional.invariant_readout` as modules (:class:`Lift`,
:class:`Magnitude`, :class:`InvariantReadout`), plus the per-pixel read-out
:class:`PixelReadout`. They are plain PyTorch operations, so a model that uses the
modules instead of calling the functions in its ``forward`` exports as it is
(:func:`hnets.export.export` keeps them), scripts and traces.

Every read-out here is rotation *invariant* pointwise: it only uses magnitudes
:math:`|z_m|`, which a rotation of the input moves with the image but does not change.
"""

from __future__ import annotations

import torch
from torch import nn

from .functional import invariant_readout

__all__ = ["Lift", "Magnitude", "InvariantReadout", "PixelReadout", "pixel_readout"]


def pixel_readout(z: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Per-pixel invariant scores: :math:`\sum_m |z_{k,m}|_\epsilon + b_k` at every position.

    ``(B, K, M, 2, H, W)`` -> ``(B, K, H, W)``. Its spatial mean is
    :func:`~hnets.nn.functional.invariant_readout`.
    """
    mag = (z.square().sum(dim=3) + eps).sqrt()  # (B, K, M, H, W)
    return mag.sum(dim=2) + bias.view(1, -1, 1, 1)


class Lift(nn.Module):
    """Real maps as order-0 harmonic maps (imaginary part zero): :func:`hnets.lift`.

    Shape:
        ``(B, C, H, W)`` -> ``(B, C, 1, 2, H, W)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # lift()'s operations without its shape check, which TorchScript cannot compile
        return torch.stack([x, torch.zeros_like(x)], dim=2).unsqueeze(2)


class Magnitude(nn.Module):
    r"""The magnitude of every stream, :math:`\sqrt{\mathrm{Re}^2 + \mathrm{Im}^2 + \epsilon}`.

    Rotation invariant pointwise (equivariant as maps); ``flatten=True`` merges channels
    and orders into one channel dimension, ready for ordinary ``nn.Conv2d`` layers.

    Shape:
        ``(B, C, M, 2, H, W)`` -> ``(B, C, M, H, W)``, or ``(B, C * M, H, W)`` with ``flatten``.
    """

    def __init__(self, eps: float = 0.0, flatten: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.flatten = flatten

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        mag = (z.square().sum(dim=3) + self.eps).sqrt()
        return mag.flatten(1, 2) if self.flatten else mag

    def extra_repr(self) -> str:
        return f"eps={self.eps}, flatten={self.flatten}"


class _Readout(nn.Module):
    """A learned bias per class and the ``eps`` under the magnitudes' square root."""

    def __init__(self, num_classes: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.eps = eps

    def extra_repr(self) -> str:
        return f"{self.bias.shape[0]}, eps={self.eps}"


class InvariantReadout(_Readout):
    r"""Class scores invariant to rotations: magnitudes summed over orders, averaged over space.

    :math:`s_k = \operatorname{mean}_{x} \sum_m |z_{k,m}(x)|_\epsilon + b_k` with a learned
    bias per class (:func:`~hnets.nn.functional.invariant_readout`).

    Shape:
        ``(B, K, M, 2, H, W)`` -> ``(B, K)``.
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return invariant_readout(z, self.bias, self.eps)


class PixelReadout(_Readout):
    r"""Per-pixel class scores invariant to rotations (:func:`pixel_readout`).

    :math:`s_k(x) = \sum_m |z_{k,m}(x)|_\epsilon + b_k`: the scores at a pixel do not
    change when the input turns about it, and the score maps turn with the input.

    Shape:
        ``(B, K, M, 2, H, W)`` -> ``(B, K, H, W)``.
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return pixel_readout(z, self.bias, self.eps)
