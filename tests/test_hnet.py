"""The H-Net builder: configurations, the MNIST model as one of them, dense outputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hnets.models import HNet, HNetMNIST, build_model, default_hnet_options


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _settled(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Batch-norm statistics from ``x``, then eval mode."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def test_hnet_mnist_is_an_hnet_configuration_with_the_same_keys_and_logits():
    torch.manual_seed(0)
    mnist = HNetMNIST(width=1.2)
    general = HNet(channels=(8, 16, 32), width=1.2, depth=2, pool=(2, 2, 1), n_rings=4)
    assert {k: v.shape for k, v in mnist.state_dict().items()} == {
        k: v.shape for k, v in general.state_dict().items()
    }
    general.load_state_dict(mnist.state_dict())
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(general.eval()(x), mnist.eval()(x), rtol=0, atol=0)


def test_stages_depth_kernel_pool_and_stride_shape_the_network():
    model = HNet(in_channels=3, num_classes=5, channels=(4, 6, 8), depth=(1, 2, 3),
                 kernel_size=(7, 5, 3), pool=(2, 1, 1), stride=(1, 2, 1))  # fmt: skip
    convs = [block.conv for block in model.features]
    assert [c.kernel_size for c in convs] == [7, 5, 5, 3, 3, 3]
    assert [c.stride for c in convs] == [1, 2, 1, 1, 1, 1]
    assert [b.pool is not None for b in model.features] == [True] + [False] * 5
    assert [b.bn is not None for b in model.features] == [True, False, True, False, False, True]
    assert model.stage_ends == [0, 2, 5]
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize(
    "options",
    [{"depth": 0}, {"pool": (2, 2)}, {"kernel_size": 4}, {"head": "pixels"}, {"batch_norm": 1},
     {"channels": ()}, {"skip": "sum"}, {"head": "dense", "skip": "add", "channels": (4, 8)}],
)  # fmt: skip
def test_bad_configurations_say_what_is_wrong(options):
    with pytest.raises(ValueError, match="HNet"):
        HNet(**options)


def test_build_model_hnet_is_the_mnist_model_for_its_options_and_hnet_otherwise():
    assert type(build_model("hnet")) is HNetMNIST
    assert type(build_model("hnet", width=1.2, in_channels=3, n_classes=4)) is HNetMNIST
    model = build_model("hnet", n_classes=4, depth=1, channels=[4, 8])
    assert type(model) is HNet and model.bias.shape == (4,)
    assert model.hnets_config == {
        "name": "hnet",
        "options": {"n_classes": 4, "depth": 1, "channels": [4, 8]},
    }


@pytest.mark.parametrize(
    ("side", "stages"), [(28, None), (32, None), (48, 3), (64, 4), (96, 4), (128, 5)]
)
def test_default_options_grow_a_stage_per_doubling_until_twelve_pixels(side, stages):
    options = default_hnet_options(side, side)
    if stages is None:
        assert options == {}
        return
    assert len(options["channels"]) == stages and options["pool"][-1] == 1
    assert side / 2 ** (stages - 1) <= 12
    model = build_model("hnet", in_channels=3, n_classes=5, **options)
    assert model(torch.rand(1, 3, side, side)).shape == (1, 5)


_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "max_examples": 8}


@settings(**_SETTINGS)
@given(
    stages=st.integers(1, 3),
    side=st.integers(1, 5),
    by_stride=st.booleans(),
    skip=st.sampled_from(["concat", "add"]),
    k=st.integers(1, 3),
)
def test_dense_output_turns_exactly_with_the_input_where_the_grid_stays_centred(
    stages, side, by_stride, skip, k
):
    """Pooling by 2 needs sides divisible by 2 per pooled stage (4 * side: 4, 8, ...);
    stride 2 needs odd sides at each strided stage (4 * side + 1: 5, 9, 13, ...)."""
    torch.manual_seed(side)
    down = (1,) + (2,) * (stages - 1)
    size = 4 * side + 1 if by_stride else 4 * side
    resample = {"pool": 1, "stride": down} if by_stride else {"pool": down}
    model = HNet(in_channels=2, num_classes=3, channels=(3,) * stages, depth=1, head="dense",
                 skip=skip, **resample)  # fmt: skip
    model = _settled(model.double(), torch.rand(4, 2, size, size, dtype=torch.float64))
    x = torch.rand(2, 2, size, size, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 3, size, size)
        turned = model(torch.rot90(x, k, dims=(-2, -1)))
    assert _relative(turned, torch.rot90(y, k, dims=(-2, -1))) < 1e-12


@pytest.mark.parametrize("size", [18, 22])
def test_dense_output_is_not_exact_where_pooling_cuts_a_row(size):
    """18 -> 9 -> 4 drops the ninth row: the grid shifts under a quarter turn."""
    torch.manual_seed(0)
    model = HNet(in_channels=1, num_classes=2, channels=(3, 3, 3), depth=1, head="dense")
    model = _settled(model.double(), torch.rand(4, 1, size, size, dtype=torch.float64))
    x = torch.rand(2, 1, size, size, dtype=torch.float64)
    with torch.no_grad():
        y, turned = model(x), model(torch.rot90(x, 1, dims=(-2, -1)))
    assert _relative(turned, torch.rot90(y, 1, dims=(-2, -1))) > 1e-6


@pytest.mark.parametrize("size", [27, 28])
def test_classification_logits_are_invariant_on_even_and_odd_sides_without_pooling(size):
    torch.manual_seed(0)
    model = HNet(in_channels=3, num_classes=4, channels=(4, 6), pool=1).double()
    model = _settled(model, torch.rand(4, 3, size, size, dtype=torch.float64))
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        y, turned = model(x), model(torch.rot90(x, 3, dims=(-2, -1)))
    assert _relative(turned, y) < 1e-12
