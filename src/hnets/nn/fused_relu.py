r"""The magnitude ReLU: its definition, its backward and its accelerated forms.

:func:`relu_pairs` is the definition in PyTorch ops. The rest computes the same values
faster or with less memory, and is tested against it:

* :class:`MagnitudeReLUFunction`: an autograd function that keeps only its input and
  recomputes the rest in a handful of passes (autograd through the composed ops keeps
  about twice as many full-size maps);
* :class:`BatchNormMagnitudeReLUFunction`: training-mode magnitude batch norm and the
  ReLU as one function (two full-size passes backwards instead of about eight);
* both with ``k x k`` mean pooling fused in (``pool=k``), and the native CPU kernels of
  :mod:`hnets._native` underneath where they can run (float32, CPU, eager);
* :func:`relu_of_products`: inference straight from a Gauss or Karatsuba convolution's
  unmerged products (the merged map is never stored).

:func:`magnitude_relu` and :func:`batch_norm_magnitude_relu` are the entry points
(public as :mod:`hnets.nn.functional`'s); they check their input and pick the form.
"""

from __future__ import annotations

import torch

from .. import _native
from .batchnorm import power_scale
from .layout import check_harmonic, from_pixel_major, pair_dot, per_pair, to_pixel_major
from .pooling import mean_pool

__all__ = [
    "relu_pairs",
    "MagnitudeReLUFunction",
    "BatchNormMagnitudeReLUFunction",
    "magnitude_relu",
    "batch_norm_magnitude_relu",
    "relu_of_products",
]


def relu_pairs(
    pairs: torch.Tensor, bias: torch.Tensor, eps: float, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """THE magnitude ReLU, in PyTorch ops: ``y relu(|y|_eps + b) / |y|_eps`` with ``y = z * scale``.

    ``pairs`` holds complex numbers as trailing pairs ``(..., C, M, 2)`` (pixel-major
    harmonic maps); ``bias`` and ``scale`` (``None``: 1) broadcast against ``(..., C, M)``.
    Every other form (the autograd functions below, the native kernels, the exported
    modules) is tested against this one.
    """
    y = pairs if scale is None else pairs * per_pair(scale)
    mag = pair_dot(y, y).add_(eps).sqrt_()
    factor = (mag + bias).clamp_min_(0.0).div_(mag).unsqueeze(-1)
    return y * factor if scale is None else y.mul_(factor)  # y is our own copy when scaled


def _relu_forward(
    pairs: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor,
    eps: float,
    pool: int = 1,
) -> torch.Tensor:
    """:func:`relu_pairs`, then ``k x k`` mean pooling for ``pool=k > 1`` (``H`` and ``W``
    multiples of ``k``): one pass of the native kernel where it can run (float32 CPU,
    eager), else the definition in PyTorch ops.
    """
    if _native.usable(pairs):
        return _native.relu_forward(pairs, scale, bias, eps, pool=pool)
    return _pool(relu_pairs(pairs, bias, eps, scale), pool)


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


class MagnitudeReLUFunction(torch.autograd.Function):
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


class BatchNormMagnitudeReLUFunction(torch.autograd.Function):
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


def _tiles(z: torch.Tensor, pool: int) -> bool:
    return pool == 1 or (z.shape[-2] % pool == 0 and z.shape[-1] % pool == 0)


def magnitude_relu(
    z: torch.Tensor,
    bias: torch.Tensor,
    *,
    scale: torch.Tensor | None = None,
    eps: float = 1e-6,
    pool: int = 1,
    inplace: bool = False,
) -> torch.Tensor:
    r"""The magnitude ReLU of every stream, phase kept (:class:`~hnets.nn.HNonLinearity`):

    .. math::

        y \;\mapsto\; y\, \frac{\max(|y|_\epsilon + b_{c,m},\, 0)}{|y|_\epsilon},
        \qquad y = a_{c,m}\, z, \quad |y|_\epsilon = \sqrt{|y|^2 + \epsilon}

    Args:
        z: a harmonic map ``(B, C, M, 2, H, W)``.
        bias: ``b``, one per stream ``(C, M)``.
        scale: ``a``, an optional positive factor per stream ``(C, M)`` (how an eval-mode
            :class:`~hnets.nn.HBatchNorm` folds in); ``None`` for 1.
        eps: :math:`\epsilon`, keeping value and gradient finite at ``z = 0``.
        pool: ``k > 1`` applies ``k x k`` mean pooling (stride ``k``) to the result; where
            the windows tile the maps the two run as one pass and the full-size result
            is never stored.
        inplace: where autograd is not recording and the native kernel runs, write the
            result over ``z``.

    The definition in PyTorch ops is :func:`relu_pairs`; this
    function runs it through a memory-lean autograd function and, on float32 CPU
    tensors, native kernels tested against it.

    Shape:
        ``(B, C, M, 2, H, W)`` -> ``(B, C, M, 2, H / pool, W / pool)``.
    """
    check_harmonic(z, channels=bias.shape[0], orders=bias.shape[1], where="magnitude_relu")
    if pool < 1:
        raise ValueError(f"pool must be >= 1; got {pool}")
    return _magnitude_relu(z, bias, scale, eps, pool, inplace)


def _magnitude_relu(
    z: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    eps: float,
    pool: int,
    inplace: bool,
) -> torch.Tensor:
    pairs = to_pixel_major(z)
    if pool > 1 and not (_tiles(z, pool) and _native.usable(pairs)):
        return mean_pool(_magnitude_relu(z, bias, scale, eps, 1, False), pool)
    bias = bias.to(z.dtype)
    if inplace and pool == 1 and not torch.is_grad_enabled() and _native.usable(pairs):
        return from_pixel_major(_native.relu_forward(pairs, scale, bias, eps, inplace=True))
    return from_pixel_major(MagnitudeReLUFunction.apply(pairs, scale, bias, eps, pool))


def batch_norm_magnitude_relu(
    z: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor | None,
    running_power: torch.Tensor | None,
    *,
    training: bool,
    momentum: float = 0.1,
    bn_eps: float = 1e-5,
    eps: float = 1e-6,
    pool: int = 1,
    inplace: bool = False,
) -> torch.Tensor:
    r"""Magnitude batch norm (:class:`~hnets.nn.HBatchNorm`), then :func:`magnitude_relu`.

    The stream factor is ``a = weight / sqrt(P + bn_eps)`` with ``P`` the batch's mean
    power :math:`E|z_{c,m}|^2` over batch and positions when ``training`` (and then
    ``running_power``, if given, moves towards it by ``momentum``, in place, as
    ``F.batch_norm`` does with its running statistics), else ``running_power``.
    In training both run as one autograd function: one full-size map is kept for the
    backward instead of two, and the backward makes two full-size passes instead of
    about eight. Values are those of the two layers one after the other.

    Shape:
        ``(B, C, M, 2, H, W)`` -> ``(B, C, M, 2, H / pool, W / pool)``.
    """
    check_harmonic(
        z, channels=bias.shape[0], orders=bias.shape[1], where="batch_norm_magnitude_relu"
    )
    if pool < 1:
        raise ValueError(f"pool must be >= 1; got {pool}")
    if not training:
        if running_power is None:
            raise ValueError("batch_norm_magnitude_relu needs running_power when not training")
        scale = power_scale(running_power, weight, bn_eps)
        return _magnitude_relu(z, bias, scale.to(z.dtype), eps, pool, inplace)
    pairs = to_pixel_major(z)
    fuse_pool = _tiles(z, pool) and _native.usable(pairs)
    weight = None if weight is None else weight.to(z.dtype)
    out, power = BatchNormMagnitudeReLUFunction.apply(
        pairs, weight, bias.to(z.dtype), bn_eps, eps, pool if fuse_pool else 1
    )
    if running_power is not None:
        with torch.no_grad():
            running_power.lerp_(power.detach().to(running_power.dtype), momentum)
    out = from_pixel_major(out)
    return out if fuse_pool or pool == 1 else mean_pool(out, pool)


def relu_of_products(
    products: list[torch.Tensor],
    streams: tuple[int, int],
    bias: torch.Tensor,
    *,
    scale: torch.Tensor | None = None,
    eps: float = 1e-6,
    pool: int = 1,
) -> torch.Tensor:
    """Inference: the magnitude ReLU (then pooling) of a convolution given as its unmerged
    real products (:meth:`hnets.nn.HConv2d.unmerged_products`), in one native pass.

    ``streams`` is the output's ``(C, M)``. Returns a harmonic map (a view of pixel-major
    memory), float32.
    """
    h, w = products[0].shape[-2:]
    tiles = h % pool == 0 and w % pool == 0
    pairs = _native.relu_products(
        products,
        streams,
        None if scale is None else scale.float(),
        bias.float(),
        eps,
        pool=pool if tiles else 1,
    )
    out = from_pixel_major(pairs)
    return out if tiles or pool == 1 else mean_pool(out, pool)
