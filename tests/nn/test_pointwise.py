"""HNonLinearity, HBatchNorm, HAvgPool2d, lift and magnitude."""

import pytest
import torch
import torch.nn.functional as F

from hnets import HAvgPool2d, HBatchNorm, HConv2d, HNonLinearity, lift, magnitude, rot90_harmonic
from hnets.nn import functional as HF


def _fused(act, bn=None, pool=1):
    """The functional form of ``act`` after ``bn`` (then ``pool``), as HBlock runs them."""

    def run(z):
        if bn is None:
            return HF.magnitude_relu(z, act.bias, eps=act.eps, pool=pool)
        out = HF.batch_norm_magnitude_relu(
            z,
            act.bias,
            bn.weight,
            bn.running_power,
            training=bn.training,
            momentum=bn.momentum,
            bn_eps=bn.eps,
            eps=act.eps,
            pool=pool,
        )
        return out

    return run


def _maps(*shape, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=dtype)


def test_nonlinearity_formula_and_phase():
    nl = HNonLinearity(3, max_order=1)
    with torch.no_grad():
        nl.bias.copy_(torch.tensor([[-0.5, 0.2], [0.0, -2.0], [1.0, 0.3]]))
    z = _maps(2, 3, 2, 2, 4, 4)
    out = nl(z)
    mag = (z.square().sum(3, keepdim=True) + nl.eps).sqrt()
    expected = z * F.relu(mag + nl.bias.view(1, 3, 2, 1, 1, 1)) / mag
    torch.testing.assert_close(out, expected)
    # the phase is kept wherever the output is non-zero
    keep = out.square().sum(3) > 1e-12
    cos = (out * z).sum(3)[keep] / (magnitude(out)[keep] * magnitude(z)[keep])
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_nonlinearity_custom_function_and_generic_path_agree():
    z = _maps(2, 3, 2, 2, 5, 5).requires_grad_()
    fast = HNonLinearity(3)
    slow = HNonLinearity(3, fn=lambda t: torch.clamp(t, min=0.0))
    with torch.no_grad():
        fast.bias.normal_()
        slow.bias.copy_(fast.bias)
    (fast(z) * z).sum().backward()
    g_fast, gb_fast = z.grad.clone(), fast.bias.grad.clone()
    z.grad = None
    (slow(z) * z).sum().backward()
    torch.testing.assert_close(g_fast, z.grad)
    torch.testing.assert_close(gb_fast, slow.bias.grad)


def test_nonlinearity_is_finite_at_zero():
    nl = HNonLinearity(1, max_order=0)
    with torch.no_grad():
        nl.bias.fill_(0.5)
    z = torch.zeros(1, 1, 1, 2, 3, 3, requires_grad=True)
    out = nl(z)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("fn", [F.relu, torch.tanh, F.softplus])
def test_nonlinearity_gradcheck(fn):
    nl = HNonLinearity(2, max_order=1, fn=fn).double()
    with torch.no_grad():
        nl.bias.normal_()
    z = _maps(1, 2, 2, 2, 3, 3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(nl, (z,))
    b = nl.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda b: torch.func.functional_call(nl, {"bias": b}, (z.detach(),)), (b,)
    )


def test_batchnorm_normalises_power_per_channel_and_order():
    bn = HBatchNorm(3, max_order=1)
    z = _maps(8, 3, 2, 2, 6, 6) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1, 1, 1)
    out = bn(z)
    power = out.square().sum(3).mean(dim=(0, 3, 4))
    torch.testing.assert_close(power, torch.ones(3, 2), atol=1e-3, rtol=1e-3)
    # the phase is kept: out is z times a positive number per (channel, order)
    ratio = out / z
    assert (ratio > 0).all()
    assert torch.allclose(ratio, ratio[:1, :, :, :1, :1, :1].expand_as(ratio), rtol=1e-4)


def test_batchnorm_running_statistics_and_eval():
    bn = HBatchNorm(2, max_order=1, momentum=0.5)
    z = _maps(4, 2, 2, 2, 5, 5) * 3.0
    bn(z)
    power = z.square().sum(3).mean(dim=(0, 3, 4))
    torch.testing.assert_close(bn.running_power, 0.5 + 0.5 * power)
    assert bn.num_batches_tracked.item() == 1
    bn.eval()
    torch.testing.assert_close(
        bn(z), z * (bn.running_power + bn.eps).rsqrt().view(1, 2, 2, 1, 1, 1)
    )


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradcheck(training):
    bn = HBatchNorm(2, max_order=1).double().train(training)
    z = _maps(2, 2, 2, 2, 3, 3, dtype=torch.float64).requires_grad_()

    def run(z):
        bn.running_power.fill_(1.5)  # keep the buffers fixed between gradcheck's calls
        return bn(z)

    assert torch.autograd.gradcheck(run, (z,))


def test_pool_is_mean_of_each_part_and_gradcheck():
    pool = HAvgPool2d(2)
    z = _maps(2, 3, 2, 2, 6, 6, dtype=torch.float64).requires_grad_()
    out = pool(z)
    assert out.shape == (2, 3, 2, 2, 3, 3)
    torch.testing.assert_close(out[..., 0, 0], z[..., :2, :2].mean(dim=(-2, -1)))
    assert torch.autograd.gradcheck(pool, (z,))


def test_lift_and_magnitude():
    x = _maps(2, 3, 5, 5, dtype=torch.float64).requires_grad_()
    z = lift(x)
    assert z.shape == (2, 3, 1, 2, 5, 5)
    torch.testing.assert_close(z[:, :, 0, 0], x)
    assert z[:, :, 0, 1].abs().max() == 0
    torch.testing.assert_close(magnitude(z)[:, :, 0], x.abs())
    assert torch.autograd.gradcheck(lambda x: magnitude(lift(x), eps=1e-6), (x,))
    with pytest.raises(ValueError, match="lift expects"):
        lift(torch.randn(3, 5, 5))


@pytest.mark.parametrize("turns", [1, 2, 3])
@pytest.mark.parametrize("training", [True, False])
def test_six_layer_stack_is_exactly_equivariant(turns, training):
    """conv, nonlinearity, batch norm and pooling composed: float32 round-off only."""
    torch.manual_seed(turns)
    layers = [HConv2d(2, 6, 5, max_order=2, in_max_order=0), HNonLinearity(6, 2)]
    for i in range(5):
        layers += [
            HConv2d(6, 6, 5 if i % 2 else 3, max_order=2),
            HBatchNorm(6, 2),
            HNonLinearity(6, 2),
        ]
        if i in (1, 3):
            layers.append(HAvgPool2d(2))
    stack = torch.nn.Sequential(*layers)
    x = lift(torch.randn(3, 2, 24, 24))
    stack.train()
    stack(x)  # one step of running statistics
    stack.train(training)
    with torch.no_grad():
        for m in stack:
            if isinstance(m, HNonLinearity):
                m.bias.uniform_(-0.3, 0.1)
        out = stack(x)
        turned = stack(rot90_harmonic(x, turns))
    # the maps are far from rotation invariant, so a wrong action could not pass by accident
    assert (rot90_harmonic(out, turns) - out).abs().max() > 100 * 1e-5
    torch.testing.assert_close(turned, rot90_harmonic(out, turns), atol=1e-5, rtol=0)


def _saved_storages(fn, *inputs):
    """Data pointers of the storages autograd keeps for ``fn(*inputs)``'s backward."""
    kept = set()

    def pack(t):
        kept.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    return out, kept


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_magnitude_relu_equals_the_composition(training, native, monkeypatch):
    if not native:
        monkeypatch.setenv("HNETS_NATIVE", "0")
    torch.manual_seed(3)
    bn_a, bn_b = HBatchNorm(3, 1), HBatchNorm(3, 1)
    act_a, act_b = HNonLinearity(3, 1), HNonLinearity(3, 1)
    with torch.no_grad():
        for p in (bn_a.weight, act_a.bias):
            p.uniform_(-1.0, 1.0)
        bn_a.running_power.uniform_(0.5, 2.0)
        bn_b.load_state_dict(bn_a.state_dict())
        act_b.load_state_dict(act_a.state_dict())
    for m in (bn_a, bn_b, act_a, act_b):
        m.train(training)
    z = _maps(4, 3, 2, 2, 6, 6).requires_grad_()
    g = _maps(4, 3, 2, 2, 6, 6, seed=1)
    fused = _fused(act_a, bn_a)(z)
    (fused * g).sum().backward()
    grads_fused = [z.grad.clone(), bn_a.weight.grad, act_a.bias.grad]
    z.grad = None
    plain = act_b(bn_b(z))
    (plain * g).sum().backward()
    grads_plain = [z.grad, bn_b.weight.grad, act_b.bias.grad]
    if native and training:
        # the native kernel sums the batch power in double, PyTorch in float: round-off
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(bn_a.running_power, bn_b.running_power, rtol=1e-6, atol=0)
    else:
        assert torch.equal(fused, plain)  # the same operations in the same order
        torch.testing.assert_close(bn_a.running_power, bn_b.running_power, rtol=0, atol=0)
    for a, b in zip(grads_fused, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_magnitude_relu_gradcheck(training, affine):
    bn, act = HBatchNorm(2, 1, affine=affine).double(), HNonLinearity(2, 1).double()
    with torch.no_grad():
        if affine:
            bn.weight.uniform_(0.5, 1.5)
        bn.running_power.uniform_(0.5, 2.0)
        act.bias.uniform_(-0.5, 0.5)
    bn.train(training)
    z = _maps(3, 2, 2, 2, 4, 4, dtype=torch.float64).requires_grad_()
    inputs = (z, act.bias) + ((bn.weight,) if affine else ())
    assert torch.autograd.gradcheck(lambda z, *params: _fused(act, bn)(z), inputs)


def test_batch_norm_magnitude_relu_keeps_only_its_input():
    bn, act = HBatchNorm(2, 1), HNonLinearity(2, 1)
    # hnets layers hand on channels-last maps (memory (B, H, W, C, M, 2)), as here
    z = _maps(4, 8, 8, 2, 2, 2).permute(0, 3, 4, 5, 1, 2).requires_grad_()
    params = {bn.weight.untyped_storage().data_ptr(), act.bias.untyped_storage().data_ptr()}

    def full_size_kept(fn):
        kept = []

        def pack(t):
            if t.numel() >= z.numel() and t.untyped_storage().data_ptr() not in params:
                kept.append(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(z)
        return set(kept)

    # the composition keeps bn's input and act's input; the fused form only z
    assert full_size_kept(_fused(act, bn)) == {z.untyped_storage().data_ptr()}
    assert len(full_size_kept(lambda t: act(bn(t)))) == 2


def test_functional_forms_refuse_a_bias_of_another_shape():
    z = _maps(1, 3, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="magnitude_relu expects 4 channels"):
        HF.magnitude_relu(z, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="batch_norm_magnitude_relu expects 3 rotation orders"):
        HF.batch_norm_magnitude_relu(z, torch.zeros(3, 3), None, None, training=True)
    with pytest.raises(ValueError, match="needs running_power"):
        HF.batch_norm_magnitude_relu(z, torch.zeros(3, 2), None, None, training=False)


def test_tiled_pool_matches_avg_pool_and_keeps_nothing():
    pool = HAvgPool2d(2)
    z = _maps(3, 4, 2, 2, 8, 6).requires_grad_()
    g = _maps(3, 4, 2, 2, 4, 3, seed=2)
    out, kept = _saved_storages(pool, z)
    assert z.untyped_storage().data_ptr() not in kept
    (out * g).sum().backward()
    ref_in = z.detach().reshape(3, 16, 8, 6).requires_grad_()
    ref = F.avg_pool2d(ref_in, 2)
    (ref * g.reshape(3, 16, 4, 3)).sum().backward()
    assert torch.equal(out.reshape(3, 16, 4, 3), ref)
    torch.testing.assert_close(z.grad.reshape(3, 16, 8, 6), ref_in.grad)
    # windows that do not tile the input take F.avg_pool2d's own path
    odd = _maps(1, 2, 1, 2, 7, 7, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: HAvgPool2d(3, stride=2)(t), (odd,))


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(("with_bn", "training"), [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("size", [(8, 6), (7, 6)])  # the second does not tile: unfused
def test_magnitude_relu_with_pooling_equals_the_composition(
    with_bn, training, size, native, monkeypatch
):
    """The functional forms with pool=2 == HAvgPool2d(2) after them: values, gradients,
    statistics."""
    if not native:
        monkeypatch.setenv("HNETS_NATIVE", "0")
    torch.manual_seed(5)
    bns = [HBatchNorm(3, 1), HBatchNorm(3, 1)] if with_bn else [None, None]
    acts = [HNonLinearity(3, 1), HNonLinearity(3, 1)]
    with torch.no_grad():
        acts[0].bias.uniform_(-1.0, 0.5)
        acts[1].load_state_dict(acts[0].state_dict())
        if with_bn:
            bns[0].weight.uniform_(0.5, 1.5)
            bns[0].running_power.uniform_(0.5, 2.0)
            bns[1].load_state_dict(bns[0].state_dict())
    for m in acts + [b for b in bns if b is not None]:
        m.train(training)
    # channels-last, as hnets layers hand them on
    z = _maps(4, *size, 3, 2, 2).permute(0, 3, 4, 5, 1, 2).requires_grad_()
    h, w = size[0] // 2, size[1] // 2
    g = _maps(4, 3, 2, 2, h, w, seed=1)
    results = []
    for fused, act, bn in zip([True, False], acts, bns, strict=True):
        out = _fused(act, bn, pool=2)(z) if fused else HAvgPool2d(2)(_fused(act, bn)(z))
        params = [act.bias] + ([bn.weight] if with_bn else [])
        grads = torch.autograd.grad((out * g).sum(), [z, *params])
        results.append((out, grads, bn.running_power.clone() if with_bn else None))
    (out_f, grads_f, power_f), (out_p, grads_p, power_p) = results
    assert out_f.shape == (4, 3, 2, 2, h, w)
    torch.testing.assert_close(out_f, out_p, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_f, grads_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if with_bn:
        torch.testing.assert_close(power_f, power_p, rtol=1e-6, atol=0)


@pytest.mark.parametrize("with_bn", [False, True])
def test_magnitude_relu_with_pooling_gradcheck(with_bn):
    """In float64 (no native kernels) ``pool=2`` runs the two layers one after the other."""
    torch.manual_seed(0)
    bn = HBatchNorm(2, 1).double() if with_bn else None
    act = HNonLinearity(2, 1).double()
    z = _maps(2, 2, 2, 2, 4, 4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda z, b: _fused(act, bn, pool=2)(z), (z, act.bias))


def test_magnitude_relu_with_pooling_never_stores_the_full_map():
    act = HNonLinearity(2, 1)
    z = _maps(4, 8, 8, 2, 2, 2).permute(0, 3, 4, 5, 1, 2).requires_grad_()
    out, kept = _saved_storages(_fused(act, pool=2), z)
    assert out.shape[-2:] == (4, 4)
    kept.discard(act.bias.untyped_storage().data_ptr())
    assert kept == {z.untyped_storage().data_ptr()}  # only the input, for the backward


def test_magnitude_relu_pool_must_be_positive():
    with pytest.raises(ValueError, match="pool must be >= 1"):
        HF.magnitude_relu(_maps(1, 2, 2, 2, 4, 4), torch.zeros(2, 2), pool=0)


@pytest.mark.parametrize("with_bn", [False, True])
def test_inplace_writes_over_its_input_only_without_autograd(with_bn):
    """HNonLinearity(inplace=True), and the eval-mode batch-norm form with inplace=True."""
    bn = HBatchNorm(3, 1).eval()
    with torch.no_grad():
        bn.running_power.uniform_(0.5, 2.0)
    act = HNonLinearity(3, 1, inplace=True)

    def run(z, inplace):
        if with_bn:
            return HF.batch_norm_magnitude_relu(
                z, act.bias, bn.weight, bn.running_power, training=False, inplace=inplace
            )
        return act(z) if inplace else HNonLinearity(3, 1)(z)

    z = _maps(2, 5, 5, 3, 2, 2).permute(0, 3, 4, 5, 1, 2)  # channels-last, as hnets layers
    with torch.no_grad():
        expected = run(z, inplace=False)
        before = z.clone()
        mine = z.clone()
        out = run(mine, inplace=True)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    from hnets import _native

    if _native.available():
        assert out.data_ptr() == mine.data_ptr() and torch.equal(mine, expected)
    z_grad = before.clone().requires_grad_()
    run(z_grad, inplace=True).sum().backward()  # with autograd: the input is kept intact
    assert torch.equal(z_grad.detach(), before)
    assert "inplace=True" in repr(act)


@pytest.mark.parametrize("with_bn", [False, True])
def test_fused_pooling_functions_pytorch_path_gradcheck(with_bn, monkeypatch):
    """The fused autograd functions' PyTorch forward and backward (pooling and its spread,
    what a double backward through the native forward differentiates): the composition's
    values, gradcheck, and gradgradcheck where double backward is supported."""
    from hnets.nn.fused_relu import BatchNormMagnitudeReLUFunction, MagnitudeReLUFunction
    from hnets.nn.layout import from_pixel_major, to_pixel_major

    monkeypatch.setenv("HNETS_NATIVE", "0")
    pairs = _maps(2, 4, 4, 2, 2, 2, dtype=torch.float64).requires_grad_()
    bias = torch.full((2, 2), -0.3, dtype=torch.float64, requires_grad=True)

    def fused(p, b):
        if with_bn:
            return BatchNormMagnitudeReLUFunction.apply(p, None, b, 1e-5, 1e-6, 2)[0]
        return MagnitudeReLUFunction.apply(p, None, b, 1e-6, 2)

    act = HNonLinearity(2, 1).double()
    bn = HBatchNorm(2, 1, affine=False).double() if with_bn else None
    with torch.no_grad():
        act.bias.copy_(bias)
        composed = to_pixel_major(HAvgPool2d(2)(_fused(act, bn)(from_pixel_major(pairs))))
    torch.testing.assert_close(fused(pairs, bias), composed, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(fused, (pairs, bias))
    if not with_bn:  # the batch-norm variant's backward is not twice differentiable
        assert torch.autograd.gradgradcheck(fused, (pairs, bias))
