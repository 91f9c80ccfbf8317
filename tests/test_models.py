"""Models and the registry."""

import pytest
import torch

import hnets
from hnets import HConv2d, build_model, count_parameters
from hnets.nn import gaussian_kernel


def test_hnet_architecture_and_parameter_count():
    model = build_model("hnet")
    convs = [m for m in model.modules() if isinstance(m, HConv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 10]
    assert all(c.kernel_size == 5 and c.n_rings == 4 for c in convs)
    assert convs[0].in_max_order == 0 and convs[-1].max_order == 0
    assert count_parameters(model) == 23466


def test_hnet_channels_set_each_stage_and_width_scales_them():
    def widths(model):
        return [m.out_channels for m in model.modules() if isinstance(m, HConv2d)]

    assert widths(build_model("hnet", channels=[8, 20, 40])) == [8, 8, 20, 20, 40, 40, 10]
    doubled = [10, 10, 20, 20, 40, 40, 10]
    assert widths(build_model("hnet", channels=(5, 10, 20), width=2)) == doubled
    default = build_model("hnet", channels=(8, 16, 32))
    assert count_parameters(default) == count_parameters(build_model("hnet"))
    for bad in ([8, 16], [8, 0, 32], [8, 16.5, 32], [8, True, 32]):
        with pytest.raises(ValueError, match=r"HNetMNIST channels must be 3 positive integers"):
            build_model("hnet", channels=bad)
    with pytest.raises(ValueError, match=r"RegularCNN channels must be 6 positive integers"):
        build_model("cnn", channels=[12, 24, 30])


def test_cnn_has_about_the_same_number_of_parameters():
    hnet, cnn = count_parameters(build_model("hnet")), count_parameters(build_model("cnn"))
    assert abs(cnn - hnet) / hnet < 0.10


@pytest.mark.parametrize("name", ["hnet", "cnn"])
@pytest.mark.parametrize("batch", [1, 5])
def test_images_in_logits_out(name, batch):
    model = build_model(name)
    out = model(torch.rand(batch, 1, 28, 28))
    assert out.shape == (batch, 10)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(batch, 1, 28, 28)).shape == (batch, 10)


def test_hnet_every_parameter_learns():
    torch.manual_seed(0)
    model = build_model("hnet")
    model(torch.rand(4, 1, 28, 28)).logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and (p.grad != 0).all(), name


@pytest.mark.parametrize("channels", [(8, 16, 32), (4, 10, 6)])
@pytest.mark.parametrize("eval_blur", [0.0, 0.5])
@pytest.mark.parametrize("training", [True, False])
def test_hnet_logits_are_invariant_to_quarter_turns(training, eval_blur, channels):
    torch.manual_seed(0)
    model = build_model("hnet", eval_blur=eval_blur, channels=channels).train(training)
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        logits = model(x)
        for k in (1, 2, 3):
            torch.testing.assert_close(
                model(torch.rot90(x, k, dims=(-2, -1))), logits, atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("name", ["hnet", "cnn"])
def test_eval_blur_smooths_inputs_at_inference_only(name):
    torch.manual_seed(0)
    blurred = build_model(name, eval_blur=0.5)
    plain = build_model(name)
    plain.load_state_dict(blurred.state_dict())  # the option adds no state
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(blurred.train()(x), plain.train()(x), rtol=0, atol=0)
        blurred.eval(), plain.eval()
        smoothed = torch.nn.functional.conv2d(
            x, torch.outer(*[gaussian_kernel(0.5)] * 2).view(1, 1, 5, 5), padding=2
        )
        torch.testing.assert_close(blurred(x), plain(smoothed), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(blurred(x), plain(x), atol=1e-4)
    with pytest.raises(ValueError, match="eval_blur must be"):
        build_model(name, eval_blur=-1.0)


def test_registry_options_and_errors():
    wide = build_model("hnet", width=1.5, max_order=2)
    assert wide.hnets_config == {"name": "hnet", "options": {"width": 1.5, "max_order": 2}}
    assert count_parameters(wide) > count_parameters(build_model("hnet"))
    assert hnets.model_names() == ["cnn", "hnet"]
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match="bad options"):
        build_model("cnn", max_order=2)


def _layer_by_layer(model, x):
    """lift + the unfused features + the read-out written out: the reference forward."""
    import copy

    plain = hnets.nn.unfuse(copy.deepcopy(model))
    z = plain.head(plain.features(hnets.lift(x * plain.input_scale)))
    mag = (z.square().sum(dim=3) + 1e-6).sqrt()
    return plain, mag.sum(dim=2).mean(dim=(-2, -1)) + plain.bias


@pytest.mark.parametrize("training", [True, False])
def test_hnet_fused_forward_equals_its_layers_one_by_one(training):
    """HNetMNIST feeds real images to its first convolution and runs its blocks fused:
    the same logits, gradients and running statistics as ``lift`` and the unfused
    ``features`` run layer by layer."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    fused = hnets.HNetMNIST().train(training)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    plain, out_p = _layer_by_layer(fused, x)
    assert all(not b.fused for b in plain.features) and all(b.fused for b in fused.features)
    out_f = fused(x)
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    F.cross_entropy(out_f, y).backward()
    F.cross_entropy(out_p, y).backward()
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(fused.buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_hnet_blocks_show_in_print_and_hooks_see_what_runs():
    model = hnets.HNetMNIST().eval()
    assert repr(model).count("HBlock(") == 6 and "fused=True" in repr(model)
    x = torch.rand(2, 1, 28, 28)
    seen = []

    def hook(m, i, o):
        seen.append((type(m).__name__, o.shape[-1]))

    handles = [m.register_forward_hook(hook) for m in model.features.modules()
               if m is not model.features]  # fmt: skip
    with torch.no_grad():
        fused_logits = model(x)
        # fused: the blocks run as units; of their layers only convolutions run as
        # modules (in blocks 1 and 2; blocks 3-6 read unmerged products in inference)
        assert [w for n, w in seen if n == "HBlock"] == [28, 14, 14, 7, 7, 7]
        assert [n for n, _ in seen if n != "HBlock"] == ["HConv2d", "HConv2d"]
        seen.clear()
        with hnets.nn.unfused(model):
            assert "fused=False" in repr(model)
            unfused_logits = model(x)
        assert "fused=False" not in repr(model)  # restored
    for h in handles:
        h.remove()
    layers = [n for n, _ in seen if n != "HBlock"]
    assert layers.count("HConv2d") == 6 and layers.count("HAvgPool2d") == 2
    assert layers.count("HBatchNorm") == 3 and layers.count("HNonLinearity") == 6
    torch.testing.assert_close(unfused_logits, fused_logits, rtol=1e-5, atol=1e-5)


def test_hnet_inference_fusions_give_the_layer_by_layer_logits(monkeypatch):
    """In inference the blocks read the convolutions' unmerged products (Gauss, Karatsuba)
    and run the ReLU in place: the same logits as lift + features, layer by layer."""
    from hnets import _native

    torch.manual_seed(1)
    model = hnets.HNetMNIST().eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_power"):
                buf.uniform_(0.5, 2.0)
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        _, expected = _layer_by_layer(model, x)
    if not _native.available():
        pytest.skip("needs the native kernels")
    fused_calls = []
    real = _native.relu_products
    monkeypatch.setattr(
        _native, "relu_products", lambda *a, **k: fused_calls.append(1) or real(*a, **k)
    )
    with torch.inference_mode():
        got = model(x)
    assert len(fused_calls) == 4  # blocks 3 to 6 (Gauss, Gauss, Gauss, Karatsuba)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    fused_calls.clear()
    with torch.inference_mode(), hnets.nn.unfused(model):
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert not fused_calls


def test_hnet_loads_weights_saved_before_pooling_moved_into_the_blocks():
    """Old state dicts had the pools at features.2 and .5 (blocks at 0, 1, 3, 4, 6, 7)."""
    torch.manual_seed(2)
    model = hnets.HNetMNIST()
    old_index = {"0": "0", "1": "1", "2": "3", "3": "4", "4": "6", "5": "7"}
    old = {}
    for key, value in model.state_dict().items():
        if key.startswith("features."):
            i, rest = key[len("features.") :].split(".", 1)
            key = f"features.{old_index[i]}.{rest}"
        old[key] = value.clone()
    fresh = hnets.HNetMNIST()
    fresh.load_state_dict(old, strict=True)
    for (name, a), b in zip(fresh.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert hnets.models.upgrade_state_dict(fresh, old).keys() == model.state_dict().keys()
