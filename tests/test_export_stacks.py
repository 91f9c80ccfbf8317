"""Export of user-built stacks of hnets layers: random architectures, any container."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import hnets
from hnets.export import export, export_onnx
from hnets.nn import HBlock, InvariantReadout, Lift, Magnitude

_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@st.composite
def stacks(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    """A random stack of hnets layers, loose or in blocks, in one of several containers."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    cin = channels = draw(st.integers(1, 3))
    size = side = draw(st.integers(8, 24))
    order_in, layers = 0, []
    for _ in range(draw(st.integers(1, 3))):
        cout, order = draw(st.integers(1, 4)), draw(st.integers(0, 2))
        k, stride = draw(st.sampled_from([3, 5, 7])), draw(st.sampled_from([1, 1, 2]))
        bn, pool = draw(st.booleans()), draw(st.sampled_from([1, 1, 2]))
        after = ((size + 2 * (k // 2) - k) // stride + 1) // pool
        if after < 2:
            break
        size = after
        conv = hnets.HConv2d(cin, cout, k, max_order=order, in_max_order=order_in,
                             stride=stride, bias=draw(st.booleans()))  # fmt: skip
        norm = hnets.HBatchNorm(cout, order) if bn else None
        act = hnets.HNonLinearity(cout, order)
        if draw(st.booleans()):
            layers.append(HBlock(conv, act, norm, pool=pool))
        else:
            layers += [conv, *([norm] if norm else []), act]
            layers += [hnets.HAvgPool2d(2)] if pool == 2 else []
        cin, order_in = cout, order
    classes = draw(st.integers(2, 4))
    if draw(st.booleans()):  # torch layers after the harmonic maps
        head: list[nn.Module] = [
            Magnitude(flatten=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(cin * (order_in + 1), classes),
        ]
    else:  # a last harmonic convolution and the invariant read-out
        head = [
            hnets.HConv2d(cin, classes, 3, max_order=0, in_max_order=order_in),
            InvariantReadout(classes),
        ]
    if draw(st.booleans()):
        layers.insert(0, Lift())
    kind = draw(st.sampled_from(["sequential", "nested", "user"]))
    if kind == "sequential":
        model: nn.Module = nn.Sequential(*layers, *head)
    elif kind == "nested":
        model = nn.Sequential(nn.Sequential(*layers), nn.Sequential(*head))
    else:
        model = _UserModel(layers, head)
    x = torch.rand(6, channels, side, side)
    return model, x


class _UserModel(nn.Module):
    """A model of one's own: a ModuleList and a ModuleDict, a forward that calls them."""

    def __init__(self, layers: list[nn.Module], head: list[nn.Module]) -> None:
        super().__init__()
        self.body = nn.ModuleList(layers)
        self.parts = nn.ModuleDict({"head": nn.Sequential(*head)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.body:
            x = layer(x)
        return self.parts["head"](x)


def _trained(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` with batch-norm statistics of its own and non-trivial biases, in eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
        for m in model.modules():
            if isinstance(m, hnets.HNonLinearity):
                m.bias.uniform_(-0.4, 0.1)
            if isinstance(m, InvariantReadout):
                m.bias.normal_()
    return model.eval()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@settings(max_examples=25, **_SETTINGS)
@given(stacks())
def test_export_of_any_stack_equals_it_and_scripts(case):
    model, x = case
    model = _trained(model, x)
    with torch.no_grad():
        expected = model(x)
        plain = export(model)
        assert not any(
            isinstance(m, (hnets.HConv2d, hnets.HBatchNorm, hnets.HNonLinearity, HBlock))
            for m in plain.modules()
        )
        assert _relative(plain(x), expected) < 1e-5
        assert _relative(torch.jit.script(plain)(x), expected) < 1e-5
    assert not model.training and any(isinstance(m, hnets.HConv2d) for m in model.modules())


@settings(max_examples=4, **_SETTINGS)
@given(stacks())
def test_exported_stacks_run_in_onnxruntime_and_torch_export(tmp_path_factory, case):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, x = case
    model = _trained(model, x)
    with torch.no_grad():
        expected = model(x)
        program = torch.export.export(export(model), (x,))
        assert _relative(program.module()(x), expected) < 1e-5
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", input_shape=x.shape[1:])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    assert _relative(torch.from_numpy(got), expected) < 1e-4


@pytest.mark.parametrize("head", ["invariant", "dense"])
def test_hnet_of_either_head_exports_scripts_and_traces(head):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 20, 20)
    model = _trained(hnets.HNet(in_channels=3, num_classes=4, channels=(4, 6), head=head), x)
    plain = export(model)
    with torch.no_grad():
        expected = model(x)
        assert _relative(plain(x), expected) < 1e-5
        assert _relative(torch.jit.script(plain)(x), expected) < 1e-5
        assert _relative(torch.export.export(plain, (x,)).module()(x), expected) < 1e-5


def test_batch_norm_after_a_convolution_in_a_sequential_is_folded():
    torch.manual_seed(0)
    conv, bn = hnets.HConv2d(2, 3, 3, in_max_order=0), hnets.HBatchNorm(3)
    x = torch.rand(4, 2, 9, 9)
    model = _trained(nn.Sequential(conv, bn, hnets.HNonLinearity(3)), x)
    plain = export(model)
    assert isinstance(plain[1], nn.Identity)
    with torch.no_grad():
        assert _relative(plain(x), model(x)) < 1e-5
