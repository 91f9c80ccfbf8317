"""HBlock: the fused conv -> batch norm -> nonlinearity -> pool unit, fused and unfused."""

import copy

import pytest
import torch
import torch.nn.functional as F

from hnets.nn import HBatchNorm, HBlock, HConv2d, HNonLinearity, fuse, unfuse, unfused


def _block(cin=3, cout=4, *, bn=True, pool=1, fn=F.relu, impl="auto", seed=0):
    torch.manual_seed(seed)
    conv = HConv2d(cin, cout, 5, max_order=1, in_max_order=1, impl=impl)
    norm = HBatchNorm(cout, 1) if bn else None
    act = HNonLinearity(cout, 1, fn=fn)
    with torch.no_grad():
        act.bias.uniform_(-0.8, 0.2)
        if norm is not None:
            norm.weight.uniform_(0.5, 1.5)
            norm.running_power.uniform_(0.5, 2.0)
    return HBlock(conv, act, norm, pool=pool)


def _maps(b, c, h, w, seed=1):
    torch.manual_seed(seed)
    # channels-last memory, as hnets layers hand maps on
    return torch.randn(b, h, w, c, 2, 2).permute(0, 3, 4, 5, 1, 2)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("bn", "pool", "size"), [(True, 1, 8), (True, 2, 8), (False, 2, 8),
                                                   (True, 2, 7), (False, 1, 7)])  # fmt: skip
def test_fused_block_equals_its_layers_one_by_one(bn, pool, size, training, native, monkeypatch):
    if not native:
        monkeypatch.setenv("HNETS_NATIVE", "0")
    fused = _block(bn=bn, pool=pool).train(training)
    plain = copy.deepcopy(fused).unfuse()
    assert fused.fused and not plain.fused
    z = _maps(4, 3, size, size).requires_grad_()
    out_f, out_p = fused(z), plain(z)
    assert out_f.shape == out_p.shape == (4, 4, 2, 2, size // pool, size // pool)
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out_f)
    grads_f = torch.autograd.grad((out_f * g).sum(), [z, *fused.parameters()])
    grads_p = torch.autograd.grad((out_p * g).sum(), [z, *plain.parameters()])
    for a, b in zip(grads_f, grads_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(fused.named_buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0, msg=name)
    if bn and training:
        assert fused.bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("impl", ["gauss", "karatsuba"])
@pytest.mark.parametrize("bn", [True, False])
def test_fused_inference_from_unmerged_products_equals_the_layers(impl, bn):
    """Inference where the block's ReLU reads the convolution's unmerged products."""
    block = _block(32, 32, bn=bn, pool=2, impl=impl).eval()
    z = _maps(2, 32, 8, 8)
    plain = copy.deepcopy(block).unfuse()
    with torch.inference_mode():
        expected = plain(z)
        got = block(z)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_block_with_another_function_runs_its_layers():
    block = _block(fn=F.softplus, pool=2)
    z = _maps(2, 3, 6, 6)
    expected = block.pool(block.act(block.bn(block.conv(z))))
    assert block.fused  # but softplus has no fused form
    block.bn.running_power.fill_(1.0)  # the forward above updated it; start again alike
    torch.testing.assert_close(block(z), copy.deepcopy(block).unfuse()(z), rtol=0, atol=0)
    assert expected.shape == (2, 4, 2, 2, 3, 3)


def test_block_refuses_layers_that_do_not_fit():
    conv = HConv2d(3, 4, 5, max_order=1)
    with pytest.raises(ValueError, match="channels and orders differ"):
        HBlock(conv, HNonLinearity(5, 1))
    with pytest.raises(ValueError, match="channels and orders differ"):
        HBlock(conv, HNonLinearity(4, 1), HBatchNorm(4, 2))
    with pytest.raises(ValueError, match="pool must be >= 1"):
        HBlock(conv, HNonLinearity(4, 1), pool=0)


def test_fuse_unfuse_and_the_context_switch_every_block():
    model = torch.nn.Sequential(_block(), _block(4, 4, seed=1))
    assert all(b.fused for b in model)
    unfuse(model)
    assert not any(b.fused for b in model)
    fuse(model)
    assert all(b.fused for b in model)
    model[1].unfuse()
    with unfused(model):
        assert not any(b.fused for b in model)
    assert [b.fused for b in model] == [True, False]  # each block's own setting back
    assert "fused=False" in repr(model[1]) and "(pool)" not in repr(model[1])
    assert "(pool): HAvgPool2d(kernel_size=2" in repr(_block(pool=2))
