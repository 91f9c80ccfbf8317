"""Filter synthesis (hnets.nn.synthesis): the native pass against the PyTorch ops."""

from __future__ import annotations

import pytest
import torch

from hnets import HConv2d
from hnets._native import build
from hnets.nn import synthesis

from ._autograd import autograd_names

needs_compiler = pytest.mark.skipif(build._compiler() is None, reason="needs a C compiler")


def test_complex_basis_matrix_multiplies_complex_coefficients():
    """``filters_from`` with the basis matrix is the complex product ``sum_j c_j B_j``."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(2, 3, 2, 5, 5, generator=g, dtype=torch.float64)  # (F, R, 2, k, k)
    coeff = torch.randn(2, 4, 1, 3, 2, generator=g, dtype=torch.float64)  # (F, o, i, R, 2)
    got = synthesis.filters_from(coeff, synthesis.complex_basis_matrix(basis))
    b_c = torch.complex(basis[:, :, 0], basis[:, :, 1])
    c_c = torch.complex(coeff[..., 0], coeff[..., 1])
    want = torch.einsum("foir,frkl->foikl", c_c, b_c)
    torch.testing.assert_close(got, torch.stack([want.real, want.imag], dim=3))


def test_coefficients_of_are_weight_times_the_phase_rotor():
    weight, phase = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.rand(2, 3, 4).double()
    c = synthesis.coefficients_of(weight, phase)
    expected = weight * torch.exp(1j * phase)[..., None]
    torch.testing.assert_close(torch.complex(c[..., 0], c[..., 1]), expected)
    assert (synthesis.coefficients_of(weight, None)[..., 1] == 0).all()


@needs_compiler
@pytest.mark.parametrize(
    ("mi", "mo", "phase", "impl"),
    [
        (0, 2, True, "real"),
        (0, 1, False, "real"),
        (1, 1, True, "dense"),
        (2, 1, False, "dense"),
        (1, 1, True, "gauss"),
        (1, 2, False, "gauss"),
        (1, 1, True, "karatsuba"),
        (1, 1, False, "karatsuba"),
    ],
)
def test_native_synthesis_matches_pytorch(mi, mo, phase, impl, monkeypatch):
    """The training-time filter banks: same values, layout and parameter gradients."""
    torch.manual_seed(mi + 3 * mo)
    conv = HConv2d(5, 3, 5, max_order=mo, in_max_order=mi, phase=phase)
    params = [conv.weight] + ([conv.phase] if phase else [])

    def banks_and_grads():
        banks = conv._synthesise(impl)
        grads = [torch.randn(b.shape, generator=torch.Generator().manual_seed(i)) for i, b in
                 enumerate(banks)]  # fmt: skip
        conv.zero_grad()
        sum((b * g).sum() for b, g in zip(banks, grads, strict=True)).backward()
        return banks, [p.grad.clone() for p in params]

    ours, our_grads = banks_and_grads()
    assert "SynthesisBackward" in autograd_names(ours[0])
    monkeypatch.setenv("HNETS_NATIVE", "0")
    ref, ref_grads = banks_and_grads()
    assert "SynthesisBackward" not in autograd_names(ref[0])
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape and a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_compiler
def test_native_synthesis_supports_double_backward(monkeypatch):
    """A gradient penalty (create_graph=True) through the native synthesis equals PyTorch's."""
    torch.manual_seed(0)
    conv = HConv2d(3, 4, 5, max_order=1, in_max_order=1, impl="dense")
    z = torch.randn(2, 3, 2, 2, 9, 9, requires_grad=True)

    def penalty_grads():
        out = conv(z)
        (gz,) = torch.autograd.grad(out.square().sum(), z, create_graph=True)
        conv.zero_grad()
        gz.square().sum().backward()
        return out, conv.weight.grad.clone(), conv.phase.grad.clone()

    out, *ours = penalty_grads()
    assert "SynthesisBackward" in autograd_names(out)
    monkeypatch.setenv("HNETS_NATIVE", "0")
    _, *ref = penalty_grads()
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
