r"""Filter synthesis for :class:`~hnets.nn.HConv2d`: ring weights and phases -> filter banks.

A layer's filters are linear in its complex ring coefficients
``c = w e^{i beta}`` (:func:`coefficients_of`): each filter of order ``m`` is
``sum_r c_r B_{m,r}`` over the unit-norm basis images ``B`` of :mod:`hnets.basis`
(:func:`complex_basis_matrix`, :func:`filters_from`). So every bank a scheme of
:mod:`hnets.nn.schemes` reads (the dense one, Gauss's three, Karatsuba's nine) is
one matrix product of the coefficients with a fixed *layout* matrix, built once per
layer from the basis and laid out so that the product lands in memory as the
channels-last weights the convolution wants:
``bank[g, o, a, i, b] = sum_q c[o, i, q] layout[q, g, a, b]``.

:func:`bank_torch` is that product with PyTorch ops (any device and dtype, any order
of derivative); :class:`Synthesis` runs it, and its backward, as one pass of the
native kernel each way (:func:`hnets._native.synthesise`), for training on float32
CPU tensors.
"""

from __future__ import annotations

import torch

from .. import _native

__all__ = ["Synthesis", "bank_torch", "coefficients_of", "complex_basis_matrix", "filters_from"]


def complex_basis_matrix(basis: torch.Tensor) -> torch.Tensor:
    """``(F, R, 2, k, k)`` basis -> ``(F, R, 2, 2, k, k)`` so that one contraction multiplies.

    With complex coefficients ``c = (c_re, c_im)`` the filter ``sum_j c_j B_j`` has
    real part ``c_re B_re - c_im B_im`` and imaginary part ``c_re B_im + c_im B_re``:
    ``out[z] = sum_c coeff[c] * M[c, z]`` with ``M[0] = (B_re, B_im)`` and
    ``M[1] = (-B_im, B_re)``.
    """
    re, im = basis.unbind(dim=2)
    return torch.stack([torch.stack([re, im], 2), torch.stack([-im, re], 2)], dim=2)


def filters_from(coeff: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Complex coefficients ``(F, o, i, R, 2)`` x basis matrix -> filters ``(F, o, i, 2, k, k)``."""
    return torch.einsum("foirc,frczkl->foizkl", coeff, basis.to(coeff.dtype))


def coefficients_of(weight: torch.Tensor, phase: torch.Tensor | None) -> torch.Tensor:
    """Complex ring coefficients ``w e^{i beta}``: ``(F, o, i, R)`` -> ``(F, o, i, R, 2)``."""
    if phase is None:
        return torch.stack([weight, torch.zeros_like(weight)], dim=-1)
    rotor = torch.stack([phase.cos(), phase.sin()], dim=-1)
    return weight.unsqueeze(-1) * rotor.unsqueeze(-2)


def bank_torch(
    weight: torch.Tensor, phase: torch.Tensor | None, layout: torch.Tensor
) -> torch.Tensor:
    """PyTorch version of :func:`hnets._native.synthesise`: the bank ``(G, O, A, I, B)``."""
    coeff = coefficients_of(weight, phase)
    _, o, i, _, _ = coeff.shape
    q, g, a, b = layout.shape
    rows = coeff.permute(1, 2, 0, 3, 4).reshape(o * i, q)
    bank = rows @ layout.reshape(q, -1).to(rows.dtype)
    return bank.view(o, i, g, a, b).permute(2, 0, 3, 1, 4)


class Synthesis(torch.autograd.Function):
    """The filter bank straight from ring weights and phases, in the convolution's layout.

    One native pass each way (:func:`hnets._native.synthesise`) instead of the
    coefficient products, the matrix product and the strided copy into the
    channels-last bank, and their backwards. A backward that must itself be
    differentiable (``create_graph=True``) differentiates :func:`bank_torch` instead.
    Arguments: ``weight``, ``phase`` (or ``None``), the layout ``(q, G, A, B)`` and its
    transpose ``(G, A, B, q)``, all float32 CPU tensors.
    """

    @staticmethod
    def forward(ctx, weight, phase, layout, layout_t):  # noqa: ANN001, ANN205
        cos = sin = None
        if phase is not None:
            cos, sin = phase.cos(), phase.sin()
        ctx.save_for_backward(weight, phase, cos, sin, layout, layout_t)
        return _native.synthesise(weight, cos, sin, layout)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        weight, phase, cos, sin, layout, layout_t = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            inputs = (weight,) if phase is None else (weight, phase)
            grads = torch.autograd.grad(
                bank_torch(weight, phase, layout), inputs, grad, create_graph=True
            )
            return grads[0], grads[1] if phase is not None else None, None, None
        grad_w, grad_phase = _native.synthesise_backward(
            grad.contiguous(), weight, cos, sin, layout_t
        )
        return grad_w, grad_phase, None, None
