"""HConv2d: maths against a slow reference, exact quarter-turn equivariance, gradients, cache."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from hnets import HConv2d, lift, rot90_harmonic
from hnets.basis import harmonic_basis


def _reference(conv: HConv2d, z: torch.Tensor) -> torch.Tensor:
    """Slow, independent complex implementation: one complex conv2d per (out order, in order)."""
    basis = harmonic_basis(
        conv.kernel_size, conv.weight.shape[0] - 1, conv.n_rings, dtype=torch.float64
    )
    b_c = torch.complex(basis[:, :, 0], basis[:, :, 1])  # (F, R, k, k)
    w = conv.weight.detach().double()
    beta = conv.phase.detach().double() if conv.phase is not None else torch.zeros(w.shape[:3])
    filters = torch.einsum("foir,frkl->foikl", w.to(torch.complex128), b_c)
    filters = filters * torch.exp(1j * beta)[..., None, None]
    zc = torch.complex(z[:, :, :, 0].double(), z[:, :, :, 1].double())  # (B, C, Mi, H, W)
    outs = []
    for mo in range(conv.max_order + 1):
        acc = 0
        for mi in range(conv.in_max_order + 1):
            d = mo - mi
            f = filters[d] if d >= 0 else filters[-d].conj()
            acc = acc + F.conv2d(zc[:, :, mi], f, stride=conv.stride, padding=conv.padding)
        outs.append(acc)
    out = torch.stack(outs, dim=2)
    if conv.bias is not None:
        bias = torch.complex(conv.bias[:, 0].double(), conv.bias[:, 1].double()).detach()
        out[:, :, 0] += bias.view(1, -1, 1, 1)
    return torch.stack([out.real, out.imag], dim=3)


@pytest.mark.parametrize(
    ("impl", "mi", "mo"),
    [
        (impl, mi, mo)
        for impl in ("dense", "dense-nchw", "gauss")
        for mi, mo in [(0, 0), (0, 1), (1, 1), (2, 1), (1, 3), (3, 0)]
    ]
    + [("karatsuba", 1, 1)],
)
@pytest.mark.parametrize("phase", [True, False])
def test_matches_complex_reference(impl, mi, mo, phase):
    torch.manual_seed(mi * 10 + mo)
    conv = HConv2d(3, 4, 5, max_order=mo, in_max_order=mi, phase=phase, impl=impl)
    z = torch.randn(2, 3, mi + 1, 2, 11, 11)
    expected = _reference(conv, z).float()
    torch.testing.assert_close(conv(z), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("impl", ["gauss", "karatsuba"])
def test_fast_convolutions_match_the_dense_bank(stride, impl):
    """The layer with Gauss's or Karatsuba's scheme against the dense bank: outputs and
    the gradients of the input and the parameters (native path on CPU float32)."""
    torch.manual_seed(0)
    dense = HConv2d(6, 5, 5, max_order=1, impl="dense", stride=stride)
    gauss = HConv2d(6, 5, 5, max_order=1, impl=impl, stride=stride)
    gauss.load_state_dict(dense.state_dict())
    z = torch.randn(3, 6, 2, 2, 11, 11, requires_grad=True)
    outs, grads = [], []
    for conv in (dense, gauss):
        out = conv(z)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads.append(torch.autograd.grad(out, [z, conv.weight, conv.phase], g))
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the forward-only branch
        torch.testing.assert_close(gauss(z), outs[0], rtol=1e-4, atol=1e-5)


def test_bias_only_touches_order_zero_and_stride_padding_follow_reference():
    torch.manual_seed(0)
    conv = HConv2d(2, 3, 3, max_order=2, stride=2, padding=0, bias=True)
    with torch.no_grad():
        conv.bias.normal_()
    z = torch.randn(1, 2, 3, 2, 9, 9)
    torch.testing.assert_close(conv(z), _reference(conv, z).float(), atol=2e-5, rtol=1e-4)


EQUIVARIANCE_CASES = [
    (k, mi, mo, stride)
    for k, mi, mo in itertools.product([3, 5, 7, 9], range(4), range(4))
    for stride in (1, 2)
]


@pytest.mark.parametrize(("k", "mi", "mo", "stride"), EQUIVARIANCE_CASES)
def test_quarter_turn_equivariance_is_exact(k, mi, mo, stride):
    """f(rot(z)) == rot(f(z)), with order m multiplied by i^(m k): float32 round-off only."""
    torch.manual_seed(k * 100 + mi * 10 + mo)
    conv = HConv2d(3, 2, k, max_order=mo, in_max_order=mi, stride=stride)
    size = 15 if stride == 2 else 14  # stride 2 commutes with rotations on odd sizes
    z = torch.randn(2, 3, mi + 1, 2, size, size)
    out = conv(z)
    for turns in (1, 2, 3):
        torch.testing.assert_close(
            conv(rot90_harmonic(z, turns)), rot90_harmonic(out, turns), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(("k", "stride"), [(3, 1), (5, 1), (5, 2), (7, 2)])
@pytest.mark.parametrize(("impl", "mo"), [("gauss", 2), ("karatsuba", 1)])
def test_quarter_turn_equivariance_is_exact_with_gauss_and_karatsuba(k, stride, impl, mo):
    """The same property through Gauss's three products and Karatsuba's nine (the native
    path on CPU float32)."""
    torch.manual_seed(k + stride)
    conv = HConv2d(5, 4, k, max_order=mo, in_max_order=1, stride=stride, impl=impl)
    size = 15 if stride == 2 else 14
    z = torch.randn(2, 5, 2, 2, size, size)
    out = conv(z)
    for turns in (1, 2, 3):
        torch.testing.assert_close(
            conv(rot90_harmonic(z, turns)), rot90_harmonic(out, turns), atol=1e-5, rtol=0
        )


def test_karatsuba_needs_orders_zero_and_one():
    with pytest.raises(ValueError, match="karatsuba"):
        HConv2d(3, 4, 5, max_order=2, in_max_order=1, impl="karatsuba")


def test_equivariance_fails_for_the_wrong_phase_convention():
    """The test above can fail: with i^(-m) instead of i^m the outputs do not match."""
    conv = HConv2d(2, 2, 5, max_order=1)
    z = torch.randn(1, 2, 2, 2, 12, 12)
    turned = conv(rot90_harmonic(z, 1))
    wrong = torch.rot90(rot90_harmonic(conv(z), -1), 2, dims=(-2, -1))
    assert (turned - wrong).abs().max() > 1e-2


@pytest.mark.parametrize(("mi", "mo"), [(0, 1), (1, 1), (1, 0), (2, 2), (0, 3)])
def test_every_parameter_receives_a_gradient(mi, mo):
    torch.manual_seed(1)
    conv = HConv2d(3, 4, 5, max_order=mo, in_max_order=mi, bias=True)
    z = torch.randn(2, 3, mi + 1, 2, 9, 9)
    (conv(z) * torch.randn(2, 4, mo + 1, 2, 9, 9)).sum().backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and (p.grad != 0).all(), f"dead entries in {name}"


def test_parameter_count_has_no_dead_orders():
    conv = HConv2d(8, 8, 5, max_order=1, n_rings=4)
    # filter orders 0 and 1 (order -1 is the conjugate of 1): rings + one phase each
    assert sum(p.numel() for p in conv.parameters()) == 2 * 8 * 8 * 4 + 2 * 8 * 8


def test_initialisation_keeps_unit_scale():
    torch.manual_seed(0)
    conv = HConv2d(32, 32, 5, max_order=1)
    z = torch.randn(8, 32, 2, 2, 24, 24) / 2**0.5  # E|z|^2 = 1 per stream
    power = conv(z).square().sum(dim=3).mean().item()
    assert 0.6 < power < 1.4


@pytest.mark.parametrize("impl", ["dense", "dense-nchw", "gauss", "karatsuba"])
def test_gradcheck_float64(impl):
    torch.manual_seed(0)
    conv = HConv2d(2, 2, 3, max_order=1, in_max_order=1, bias=True, impl=impl).double()
    z = torch.randn(1, 2, 2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: conv(z), (z,))
    names = ("weight", "phase", "bias")
    inputs = tuple(getattr(conv, n).detach().clone().requires_grad_() for n in names)

    def by_params(*tensors):
        return torch.func.functional_call(
            conv, dict(zip(names, tensors, strict=True)), (z.detach(),)
        )

    assert torch.autograd.gradcheck(by_params, inputs)


def test_eval_cache_is_used_and_invalidated():
    torch.manual_seed(0)
    conv = HConv2d(2, 3, 5).eval()
    z = torch.randn(1, 2, 2, 2, 8, 8)
    keys_train = set(conv.train().state_dict())
    conv.eval()
    with torch.no_grad():
        first = conv(z)
        key, cached = conv._cache
        again = conv(z)
        assert conv._cache[1] is cached  # reused, not rebuilt
        torch.testing.assert_close(first, again)
        conv.impl = "gauss" if key[0] != "gauss" else "dense"  # another scheme: rebuilt
        torch.testing.assert_close(conv(z), first, rtol=1e-5, atol=1e-5)
        assert conv._cache[1] is not cached and conv._cache[0][0] == conv.impl
        conv.impl = "auto"
        cached = conv(z) is not None and conv._cache[1]
        conv.weight.mul_(2.0)  # an in-place parameter change invalidates the cache
        doubled = conv(z)
        assert conv._cache[1] is not cached
        torch.testing.assert_close(doubled, 2 * first)
    assert set(conv.state_dict()) == keys_train
    conv.train()
    assert conv._cache is None
    with torch.inference_mode():
        conv.eval()(z)
    # a cache filled under inference_mode is not reused where autograd records
    out = conv.eval()(z.requires_grad_())
    out.sum().backward()


def test_cache_is_refreshed_after_load_state_dict_and_dtype_change():
    conv = HConv2d(2, 2, 3).eval()
    other = HConv2d(2, 2, 3)
    z = torch.randn(1, 2, 2, 2, 6, 6)
    with torch.no_grad():
        conv(z)
        conv.load_state_dict(other.state_dict())
        torch.testing.assert_close(conv(z), other.eval()(z))
        out64 = conv.double()(z.double())
    assert out64.dtype == torch.float64


def test_basis_is_a_buffer_not_state():
    conv = HConv2d(2, 2, 5)
    assert "basis" not in conv.state_dict()
    assert conv.basis.dtype == torch.float32
    assert conv.double().basis.dtype == torch.float64


def test_shape_errors_are_clear():
    conv = HConv2d(3, 4, 5, max_order=1)
    with pytest.raises(ValueError, match="expects 3 channels"):
        conv(torch.randn(1, 2, 2, 2, 8, 8))
    with pytest.raises(ValueError, match="expects 2 rotation orders"):
        conv(torch.randn(1, 3, 1, 2, 8, 8))
    with pytest.raises(ValueError, match="lift"):
        conv(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="odd"):
        HConv2d(1, 1, 4)
    with pytest.raises(ValueError, match="padding"):
        HConv2d(1, 1, 3, padding="full")


def test_repr_tells_the_truth():
    text = repr(HConv2d(3, 4, 5, max_order=2, in_max_order=0, stride=2))
    assert "3, 4, kernel_size=5" in text and "max_order=2" in text and "in_max_order=0" in text
    assert "stride=2" in text


def test_standard_strided_inputs_give_the_same_result():
    conv = HConv2d(2, 2, 3)
    z = conv(torch.randn(1, 2, 2, 2, 7, 7)).detach()
    torch.testing.assert_close(conv(z), conv(z.contiguous()))


@pytest.mark.parametrize(("mo", "stride", "bias"), [(0, 1, False), (1, 1, True), (2, 2, False)])
def test_real_images_give_what_their_lift_gives(mo, stride, bias):
    """An in_max_order=0 layer takes real images directly: the same outputs and gradients."""
    torch.manual_seed(mo)
    conv = HConv2d(3, 4, 5, max_order=mo, in_max_order=0, stride=stride, bias=bias)
    if bias:
        with torch.no_grad():
            conv.bias.normal_()
    x = torch.randn(2, 3, 11, 11, requires_grad=True)
    x_lifted = x.detach().clone().requires_grad_()
    out = conv(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    ours = [x.grad, conv.weight.grad, conv.phase.grad]
    conv.zero_grad()
    ref = conv(lift(x_lifted))
    ref.backward(grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(ours, [x_lifted.grad, conv.weight.grad, conv.phase.grad], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_real_images_quarter_turn_equivariance():
    torch.manual_seed(0)
    conv = HConv2d(2, 3, 5, max_order=2, in_max_order=0)
    x = torch.randn(2, 2, 14, 14)
    out = conv(x)
    for turns in (1, 2, 3):
        spun = torch.rot90(x, turns, dims=(-2, -1))
        torch.testing.assert_close(conv(spun), rot90_harmonic(out, turns), atol=1e-5, rtol=0)


def test_real_images_only_where_the_input_has_order_zero_only():
    with pytest.raises(ValueError, match="harmonic map shaped"):
        HConv2d(3, 4, 5, max_order=1, in_max_order=1)(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="expects 3 channels"):
        HConv2d(3, 4, 5, max_order=1, in_max_order=0)(torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match="in_max_order=0"):
        HConv2d(3, 4, 5, max_order=1, in_max_order=1).dense_weight(real_input=True)


def test_real_input_weight_is_the_real_columns_of_the_dense_bank():
    conv = HConv2d(3, 4, 5, max_order=2, in_max_order=0)
    with torch.no_grad():
        half = conv.dense_weight(real_input=True)
        assert torch.equal(half, conv.dense_weight()[:, 0::2])
    assert half.is_contiguous(memory_format=torch.channels_last)


def test_unmerged_products_only_for_native_gauss_or_karatsuba_inference():
    z = torch.randn(2, 32, 2, 2, 7, 7)
    karatsuba = HConv2d(32, 32, 5, max_order=1).eval()
    assert karatsuba.unmerged_products(z) is None  # autograd is recording
    with torch.no_grad():
        products = karatsuba.unmerged_products(z)
        from hnets import _native

        if _native.available():
            assert len(products) == 9 and products[0].shape == (2, 32, 7, 7)
            merged = _native.merge9(products).view(2, 32, 2, 2, 7, 7)
            torch.testing.assert_close(merged, karatsuba(z), rtol=0, atol=0)
        assert HConv2d(32, 32, 5, max_order=1, impl="dense").unmerged_products(z) is None
        assert HConv2d(32, 32, 5, max_order=1, bias=True).unmerged_products(z) is None
