r"""Magnitude nonlinearity: :class:`HNonLinearity`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import _native
from .batchnorm import HBatchNorm
from .functional import check_harmonic, from_pixel_major, pair_dot, per_pair, to_pixel_major
from .pooling import HAvgPool2d

__all__ = ["HNonLinearity"]


def _relu_forward(
    pairs: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor,
    eps: float,
    pool: int = 1,
) -> torch.Tensor:
    """``y relu(|y|_eps + b) / |y|_eps`` with ``y = z * scale`` (``None``: 1), pixel-major.

    ``pool=k > 1``: then ``k x k`` mean pooling of ``(B, H, W, ...)`` maps whose ``H`` and
    ``W`` are multiples of ``k``. One pass of the native kernel where it can run
    (float32 CPU, eager), else :func:`_relu_forward_torch` (and :func:`_pool`).
    """
    if _native.usable(pairs):
        return _native.relu_forward(pairs, scale, bias, eps, pool=pool)
    return _pool(_relu_forward_torch(pairs, scale, bias, eps), pool)


def _pool(pairs: torch.Tensor, k: int) -> torch.Tensor:
    """``k x k`` mean pooling of pixel-major ``(B, H, W, ...)`` maps over tiles."""
    if k == 1:
        return pairs
    b, h, w = pairs.shape[:3]
    return pairs.view(b, h // k, k, w // k, k, *pairs.shape[3:]).sum(dim=(2, 4)) / (k * k)


def _unpool(grad: torch.Tensor, k: int) -> torch.Tensor:
    """The backward of :func:`_pool`: each value divided by ``k^2`` over its tile."""
    if k == 1:
        return grad
    return (grad / (k * k)).repeat_interleave(k, dim=1).repeat_interleave(k, dim=2)


def _relu_forward_torch(
    pairs: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """:func:`_relu_forward` with PyTorch ops."""
    y = pairs if scale is None else pairs * per_pair(scale)
    mag = pair_dot(y, y).add_(eps).sqrt_()
    factor = (mag + bias).clamp_min_(0.0).div_(mag).unsqueeze(-1)
    return y * factor if scale is None else y.mul_(factor)  # y is our own copy when scaled


def _relu_backward(
    grad: torch.Tensor,
    pairs: torch.Tensor,
    a: torch.Tensor | None,
    bias: torch.Tensor,
    eps: float,
    *,
    need_bias: bool,
    need_scale: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The backward of ``out = y relu(|y|_eps + b) / |y|_eps`` with ``y = a z``, from ``z`` alone.

    With ``inv = 1 / |y|_eps``, the factor ``s = max(1 + b inv, 0)``, the mask
    ``s > 0`` and ``u = Re(conj(g) y) inv``: the gradient at ``y`` is
    ``g s + y (1 - s) mask u inv``, at ``z`` that times ``a``. Everything is computed
    from ``z`` (``|y|^2 = a^2 |z|^2``, ``Re(conj(g) y) = a Re(conj(g) z)``), so ``y`` is
    never formed.

    Returns ``(gs, kz, grad_a, grad_bias)``: the input gradient is ``g gs + z kz``
    (``gs``, ``kz`` per stream and position, the caller adds its own terms to ``kz``
    first), ``grad_a = sum(Re(conj(g_y) z))`` over batch and positions.
    """
    qz = pair_dot(pairs, pairs)  # |z|^2
    gz = pair_dot(grad, pairs)  # Re(conj(g) z)
    if a is None:
        inv = (qz + eps).rsqrt_()
        ainv = inv
    else:
        inv = (qz * a.square()).add_(eps).rsqrt_()
        ainv = inv * a
    s = (inv * bias).add_(1.0).clamp_min_(0.0)
    # s >= 0, so its sign is the mask as a float: much faster than torch.where here
    u = (gz * ainv).mul_(s.sign())  # Re(conj(g) y) / |y| where the ReLU is active, else 0
    grad_bias = u.flatten(0, -3).sum(dim=0) if need_bias else None
    ky = (1.0 - s).mul_(u).mul_(ainv)  # a times y's coefficient
    grad_a = None
    if need_scale:
        grad_a = torch.addcmul(s * gz, ky, qz).flatten(0, -3).sum(dim=0)
    if a is None:
        return s, ky, grad_a, grad_bias
    return s.mul_(a), ky.mul_(a), grad_a, grad_bias


class _MagnitudeReLU(torch.autograd.Function):
    """``y * relu(|y|_eps + b) / |y|_eps``, ``y = z * a``, on pixel-major pairs ``(..., C, M, 2)``.

    ``a`` is an optional positive factor per stream ``(C, M)``, ``None`` for 1.
    Autograd through the composed ops stores and revisits about twice as many
    full-size tensors; this version saves only ``z`` and recomputes the rest in a
    handful of contiguous passes (:func:`_relu_backward`).
    """

    @staticmethod
    def forward(  # noqa: ANN205
        ctx,  # noqa: ANN001
        pairs: torch.Tensor,
        scale: torch.Tensor | None,
        bias: torch.Tensor,
        eps: float,
        pool: int = 1,
    ):
        ctx.save_for_backward(pairs, scale, bias)
        ctx.eps, ctx.pool = eps, pool
        return _relu_forward(pairs, scale, bias, eps, pool)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        pairs, scale, bias = ctx.saved_tensors
        grad = grad.contiguous()
        if not torch.is_grad_enabled() and _native.usable(grad, pairs):  # not double backward
            grad_pairs, grad_scale, grad_bias = _native.relu_backward(
                grad, pairs, scale, bias, ctx.eps, pool=ctx.pool
            )
            grad_scale = grad_scale.to(pairs.dtype) if ctx.needs_input_grad[1] else None
            grad_bias = grad_bias.to(pairs.dtype) if ctx.needs_input_grad[2] else None
            return grad_pairs, grad_scale, grad_bias, None, None
        grad = _unpool(grad, ctx.pool)
        gs, kz, grad_scale, grad_bias = _relu_backward(
            grad,
            pairs,
            scale,
            bias,
            ctx.eps,
            need_bias=ctx.needs_input_grad[2],
            need_scale=ctx.needs_input_grad[1],
        )
        grad_pairs = torch.addcmul(grad * gs.unsqueeze(-1), pairs, kz.unsqueeze(-1))
        return grad_pairs, grad_scale, grad_bias, None, None


class _BatchNormMagnitudeReLU(torch.autograd.Function):
    """Training-mode :class:`HBatchNorm` followed by the magnitude ReLU, in one function.

    Forward: the batch power ``P = mean |z|^2`` per stream, ``a = w / sqrt(P + eps_bn)``
    and the magnitude ReLU of ``y = a z``, the same operations in the same order as the
    two layers (so the same values). Only ``z`` is kept; the backward adds the batch
    statistic's term ``-z sum(Re(conj(g_y) z)) a / ((P + eps_bn) N)`` (``N`` positions)
    to the nonlinearity's and so needs two full-size passes in all, where autograd
    through the two layers needs about eight. Returns the output and ``P`` (no gradient)
    for the running estimate.
    """

    @staticmethod
    def forward(  # noqa: ANN205
        ctx,  # noqa: ANN001
        pairs: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor,
        bn_eps: float,
        eps: float,
        pool: int = 1,
    ):
        if _native.usable(pairs):
            n = pairs.numel() // (pairs.shape[-3] * pairs.shape[-2] * 2)
            power = (_native.power_sum(pairs) / max(n, 1)).to(pairs.dtype)
        else:
            power = pair_dot(pairs, pairs).mean(dim=(0, 1, 2))
        inv_std = (power + bn_eps).rsqrt()
        scale = inv_std if weight is None else inv_std * weight
        ctx.save_for_backward(pairs, scale, inv_std, bias)
        ctx.eps, ctx.pool = eps, pool
        ctx.has_weight = weight is not None
        ctx.mark_non_differentiable(power)
        return _relu_forward(pairs, scale, bias, eps, pool), power

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_power: torch.Tensor | None):  # noqa: ANN001, ANN205
        pairs, scale, inv_std, bias = ctx.saved_tensors
        grad = grad.contiguous()
        n = pairs.numel() // (pairs.shape[-3] * pairs.shape[-2] * 2)
        if not torch.is_grad_enabled() and _native.usable(grad, pairs):  # not double backward
            # pass 1: the sums over positions; pass 2: the input gradient, which needs
            # the batch statistic's term built from the first pass's sum
            _, grad_scale, grad_bias = _native.relu_backward(
                grad, pairs, scale, bias, ctx.eps, write=False, pool=ctx.pool
            )
            grad_scale = grad_scale.to(pairs.dtype)
            corr = grad_scale * scale * inv_std.square() / n
            grad_pairs, _, _ = _native.relu_backward(
                grad, pairs, scale, bias, ctx.eps, corr=corr, pool=ctx.pool
            )
            grad_weight = grad_scale * inv_std if ctx.has_weight else None
            grad_bias = grad_bias.to(pairs.dtype) if ctx.needs_input_grad[2] else None
            return grad_pairs, grad_weight, grad_bias, None, None, None
        grad = _unpool(grad, ctx.pool)
        gs, kz, grad_scale, grad_bias = _relu_backward(
            grad, pairs, scale, bias, ctx.eps, need_bias=ctx.needs_input_grad[2], need_scale=True
        )
        kz.sub_(grad_scale * scale * inv_std.square() / n)
        grad_pairs = torch.addcmul(grad * gs.unsqueeze(-1), pairs, kz.unsqueeze(-1))
        grad_weight = grad_scale * inv_std if ctx.has_weight else None
        return grad_pairs, grad_weight, grad_bias, None, None, None


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
        inplace: where autograd is not recording (inference) and the native kernel
            runs, write the result over the input instead of a new tensor (like
            ``nn.ReLU(inplace=True)``; in training the input is kept for the backward).

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
        inplace: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.max_order = max_order
        self.fn = fn
        self.eps = eps
        self.bias_init = bias_init
        self.inplace = inplace
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

    def forward(self, z: torch.Tensor, bn: HBatchNorm | None = None, pool: int = 1) -> torch.Tensor:
        """Apply the nonlinearity to ``z``, or to ``bn(z)`` when a batch norm is given.

        ``self(z, bn=bn)`` gives the values of ``self(bn(z))`` (and updates ``bn``'s
        running estimate the same way), but in training it runs both layers as one
        function: autograd keeps one full-size map (``z``) instead of two, and the
        backward makes two full-size passes instead of about eight.

        ``pool=k`` also applies ``HAvgPool2d(k)`` to the result. Where the ``k x k``
        windows tile the maps, the magnitude ReLU and the pooling are one pass of the
        native kernel each way (the full-size result is never stored); otherwise the
        layers run one after the other.
        """
        check_harmonic(z, channels=self.channels, orders=self.max_order + 1, where="HNonLinearity")
        if bn is not None and (bn.channels, bn.max_order) != (self.channels, self.max_order):
            raise ValueError(
                f"HNonLinearity({self.channels}, max_order={self.max_order}) cannot fuse "
                f"HBatchNorm({bn.channels}, max_order={bn.max_order}): shapes differ"
            )
        if pool < 1:
            raise ValueError(f"pool must be >= 1; got {pool}")
        pairs = to_pixel_major(z)
        relu = self.fn is F.relu and z.dtype in (torch.float32, torch.float64)
        tiles = pool == 1 or (z.shape[-2] % pool == 0 and z.shape[-1] % pool == 0)
        if pool > 1 and not (relu and tiles and _native.usable(pairs)):
            return HAvgPool2d(pool)(self(z, bn=bn))  # one layer after the other
        bias = self.bias.to(z.dtype)
        if bn is not None and bn.training and relu:
            weight = None if bn.weight is None else bn.weight.to(z.dtype)
            out, power = _BatchNormMagnitudeReLU.apply(pairs, weight, bias, bn.eps, self.eps, pool)
            bn.update_running_power(power)
            return from_pixel_major(out)
        scale = None if bn is None else bn.stream_scale(z)
        inplace = relu and self.inplace and pool == 1 and not torch.is_grad_enabled()
        if inplace and _native.usable(pairs):
            return from_pixel_major(
                _native.relu_forward(pairs, scale, bias, self.eps, inplace=True)
            )
        if relu:
            out = _MagnitudeReLU.apply(pairs, scale, bias, self.eps, pool)
        else:
            if scale is not None:
                pairs = pairs * per_pair(scale)
                z = from_pixel_major(pairs)
            out = pairs * self.scale(z).to(z.dtype).unsqueeze(-1)
        return from_pixel_major(out)

    def extra_repr(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        inplace = ", inplace=True" if self.inplace else ""
        return f"{self.channels}, max_order={self.max_order}, fn={name}, eps={self.eps}{inplace}"
