"""Devices, dtypes, autocast and torch.compile."""

import pytest
import torch

import hnets
from hnets import HConv2d, rot90_harmonic

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
mps = pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs MPS")


def test_compile_fullgraph_traces_the_layers_and_the_model():
    torch.manual_seed(0)
    conv = HConv2d(2, 3, 5)
    z = torch.randn(2, 2, 2, 2, 12, 12)
    compiled = torch.compile(conv, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(z), conv(z))
    model = hnets.build_model("hnet", width=0.5)
    x = torch.rand(2, 1, 28, 28)
    out = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    out.sum().backward()
    torch.testing.assert_close(out, model(x))
    assert model.head.weight.grad is not None


def test_bfloat16_autocast_on_cpu_stays_close_and_equivariant():
    torch.manual_seed(0)
    conv = HConv2d(4, 4, 5)
    z = torch.randn(2, 4, 2, 2, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = conv(z)
        turned = conv(rot90_harmonic(z))
    assert low.dtype == torch.bfloat16
    ref = conv(z)
    assert ((low.float() - ref).norm() / ref.norm()) < 2e-2
    torch.testing.assert_close(turned.float(), rot90_harmonic(low).float(), atol=0.05, rtol=0)


def test_float64_end_to_end():
    model = hnets.build_model("hnet").double()
    assert model(torch.rand(2, 1, 28, 28, dtype=torch.float64)).dtype == torch.float64


def _device_round_trip(device: str) -> None:
    torch.manual_seed(0)
    model = hnets.build_model("hnet")
    x = torch.rand(3, 1, 28, 28)
    expected = model(x)
    moved = model.to(device)
    assert all(b.device.type == device for b in moved.buffers())
    got = moved(x.to(device)).cpu()
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
    with torch.autocast(device, dtype=torch.float16):
        half = moved(x.to(device))
    assert torch.isfinite(half).all()


@cuda
def test_cuda_matches_cpu_and_runs_under_float16_autocast():
    _device_round_trip("cuda")


@mps
def test_mps_matches_cpu():
    _device_round_trip("mps")
