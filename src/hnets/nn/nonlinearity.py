r"""Magnitude nonlinearity: :class:`HNonLinearity`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .functional import check_harmonic, from_pixel_major, pair_dot, to_pixel_major

__all__ = ["HNonLinearity"]


def _magnitude_and_factor(
    pairs: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``|z|_eps`` and ``relu(|z|_eps + b) / |z|_eps`` of pixel-major pairs."""
    mag = pair_dot(pairs, pairs).add_(eps).sqrt_()
    return mag, (mag + bias).clamp_min_(0.0).div_(mag)


class _MagnitudeReLU(torch.autograd.Function):
    """``y * relu(|y|_eps + b) / |y|_eps``, ``y = z * a``, on pixel-major pairs ``(..., C, M, 2)``.

    ``a`` is an optional positive factor per stream ``(C, M)`` (a batch norm's), ``None``
    for 1. Autograd through the composed ops stores and revisits about twice as many
    full-size tensors; this version saves only ``z`` (``y``, the factor and ``|y|`` are
    recomputed in the backward, which costs less than keeping them costs memory) and
    does the backward in a handful of contiguous passes: with ``s = relu(|y| + b) / |y|``,
    ``u = Re(conj(g) y) / |y|`` and the mask ``1[|y| + b > 0]``, the gradient at ``y``
    is ``g_y = g s + y u (mask - s) / |y|``, the bias gradient ``sum(u * mask)``, and
    then ``g_z = a g_y`` and ``g_a = sum(Re(conj(g_y) z))``.
    """

    @staticmethod
    def forward(  # noqa: ANN205
        ctx,  # noqa: ANN001
        pairs: torch.Tensor,
        scale: torch.Tensor | None,
        bias: torch.Tensor,
        eps: float,
    ):
        ctx.save_for_backward(pairs, scale, bias)
        ctx.eps = eps
        y = pairs if scale is None else pairs * scale.unsqueeze(-1)
        mag, factor = _magnitude_and_factor(y, bias, eps)
        return y.mul_(factor.unsqueeze(-1)) if scale is not None else y * factor.unsqueeze(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        pairs, scale, bias = ctx.saved_tensors
        y = pairs if scale is None else pairs * scale.unsqueeze(-1)
        mag, factor = _magnitude_and_factor(y, bias, ctx.eps)
        u = pair_dot(grad, y).div_(mag)
        mask = (mag + bias) > 0
        grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_bias = torch.where(mask, u, 0.0).flatten(0, -3).sum(dim=0)
        k = torch.where(mask, 1.0 - factor, -factor).mul_(u).div_(mag)
        grad_y = torch.addcmul(grad * factor.unsqueeze(-1), y, k.unsqueeze(-1))
        if scale is None:
            return grad_y.contiguous(), None, grad_bias, None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_scale = pair_dot(grad_y, pairs).flatten(0, -3).sum(dim=0)
        return grad_y.mul_(scale.unsqueeze(-1)).contiguous(), grad_scale, grad_bias, None


class HNonLinearity(nn.Module):
    r"""A real function of each stream's magnitude, phase kept:

    .. math::

        z \;\mapsto\; z\, \frac{f(|z|_\epsilon + b_{c,m})}{|z|_\epsilon},
        \qquad |z|_\epsilon = \sqrt{\operatorname{Re}(z)^2 + \operatorname{Im}(z)^2 + \epsilon}

    with a learned bias :math:`b` per channel and rotation order. The factor only
    depends on :math:`|z|`, which rotations leave unchanged, so the layer is exactly
    rotation equivariant. :math:`\epsilon` (default ``1e-6``) keeps the value and the
    gradient finite at :math:`z = 0`, where the phase is undefined.

    Args:
        channels: number of channels ``C``.
        max_order: highest rotation order (``M = max_order + 1`` streams per channel).
        fn: the real function :math:`f` (default ReLU); must map 0 to 0 for the output
            to vanish where the input does.
        eps: the :math:`\epsilon` above.

        bias_init: the biases' starting value. With unit-scale inputs
            (:math:`E|z|^2 \approx 1`, what :class:`HConv2d`'s initialisation and
            :class:`HBatchNorm` give) the default -0.5 zeroes the weakest fifth or so
            of the responses, so the layer is nonlinear from the first step. With 0 it
            would start as the identity (ReLU of a magnitude changes nothing) and a
            stack of harmonic layers as a linear map: on Rot-MNIST that took the
            H-Net from 77% to 45% validation accuracy after two epochs.

    Shape:
        ``(B, C, M, 2, H, W)`` -> same shape.
    """

    def __init__(
        self,
        channels: int,
        max_order: int = 1,
        fn: Callable[[torch.Tensor], torch.Tensor] = F.relu,
        eps: float = 1e-6,
        bias_init: float = -0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.max_order = max_order
        self.fn = fn
        self.eps = eps
        self.bias_init = bias_init
        self.bias = nn.Parameter(
            torch.full((channels, max_order + 1), bias_init, device=device, dtype=dtype)
        )

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        """The factor ``f(|z| + b) / |z|``, pixel-major ``(B, H, W, C, M)``, float32 or wider."""
        pairs = to_pixel_major(z)
        if pairs.dtype not in (torch.float32, torch.float64):
            pairs = pairs.float()
        mag = pair_dot(pairs, pairs).add(self.eps).sqrt()
        return self.fn(mag + self.bias.to(mag.dtype)) / mag

    def forward(self, z: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the nonlinearity to ``z``, or to ``z`` times ``scale`` when given.

        ``scale`` is a positive factor per stream ``(C, M)``, typically
        ``bn.stream_scale(z)`` of a preceding :class:`HBatchNorm`: the result equals
        ``self(bn(z))`` but training keeps only ``z`` for the backward, not both maps.
        """
        check_harmonic(z, channels=self.channels, orders=self.max_order + 1, where="HNonLinearity")
        if scale is not None and scale.shape != self.bias.shape:
            raise ValueError(
                f"HNonLinearity scale must be shaped {tuple(self.bias.shape)} (channels, orders); "
                f"got {tuple(scale.shape)}"
            )
        pairs = to_pixel_major(z)
        if self.fn is F.relu and z.dtype in (torch.float32, torch.float64):
            if scale is not None:
                scale = scale.to(z.dtype)
            out = _MagnitudeReLU.apply(pairs, scale, self.bias.to(z.dtype), self.eps)
        else:
            if scale is not None:
                pairs = pairs * scale.to(z.dtype).unsqueeze(-1)
                z = from_pixel_major(pairs)
            out = pairs * self.scale(z).to(z.dtype).unsqueeze(-1)
        return from_pixel_major(out)

    def extra_repr(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"{self.channels}, max_order={self.max_order}, fn={name}, eps={self.eps}"
