"""Export to plain PyTorch, TorchScript, torch.export and ONNX."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import hnets
from hnets import HConv2d, HNonLinearity
from hnets.errors import HNetsError
from hnets.export import export, export_onnx


def _trained_like(name: str, seed: int = 0) -> torch.nn.Module:
    """A model with non-trivial batch-norm statistics and biases, in eval mode."""
    torch.manual_seed(seed)
    model = hnets.build_model(name)
    model.train()
    for _ in range(3):
        model(torch.rand(16, 1, 28, 28))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, HNonLinearity):
                m.bias.uniform_(-0.6, 0.1)
            if isinstance(m, HConv2d) and m.bias is not None:
                m.bias.normal_()
    return model.eval()


@pytest.mark.parametrize("name", ["hnet", "cnn"])
def test_exported_model_matches_and_needs_no_hnets_layers(name):
    model = _trained_like(name)
    plain = export(model)
    kinds = {type(m).__module__.split(".")[0] for m in plain.modules()}
    assert not any(
        isinstance(m, (HConv2d, HNonLinearity, hnets.HBatchNorm, hnets.HAvgPool2d))
        for m in plain.modules()
    )
    assert kinds <= {"torch", "hnets"}  # hnets only for the two small plain modules below
    x = torch.rand(9, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-5)
    assert model.training is False


@pytest.mark.parametrize("name", ["hnet", "cnn"])
def test_export_keeps_the_models_eval_blur(name, tmp_path):
    torch.manual_seed(0)
    model = hnets.build_model(name, eval_blur=0.5).eval()
    plain = export(model)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        unblurred = hnets.build_model(name).eval()
        unblurred.load_state_dict(model.state_dict())
        assert not torch.allclose(unblurred(x), model(x), atol=1e-4)  # the blur matters
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.jit.script(plain)(x), model(x), atol=1e-5, rtol=1e-5)


def test_hnet_export_has_one_conv_per_harmonic_conv_and_folds_batch_norm():
    model = _trained_like("hnet")
    plain = export(model)
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7
    assert convs[0].in_channels == 2  # order 0, real and imaginary columns
    assert not any(isinstance(m, hnets.HBatchNorm) for m in plain.modules())
    assert convs[1].in_channels == 8 * 2 * 2 and convs[1].out_channels == 8 * 2 * 2


def test_script_and_torch_export_run_without_hnets_code():
    model = _trained_like("hnet")
    plain = export(model)
    scripted = torch.jit.script(plain)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected, atol=1e-5, rtol=1e-5)
        program = torch.export.export(plain, (x,))
        torch.testing.assert_close(program.module()(x), expected, atol=1e-5, rtol=1e-5)


def test_torchscript_file_loads_in_a_process_without_hnets(tmp_path):
    model = _trained_like("hnet")
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(export(model)), str(path))
    x = torch.rand(2, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x)
    code = (
        "import sys, torch\n"
        "sys.modules['hnets'] = None  # any import of hnets would fail\n"
        f"m = torch.jit.load(r'{path}')\n"
        f"print(m(torch.load(r'{tmp_path / 'x.pt'}')).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = torch.tensor(eval(out.stdout))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_onnx_runs_in_onnxruntime_with_any_batch_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _trained_like("hnet")
    path = export_onnx(model, tmp_path / "hnet.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images"
    for batch in (1, 7):
        x = torch.rand(batch, 1, 28, 28)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-4)


def test_a_model_without_hnets_layers_comes_back_as_an_eval_copy():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    plain = export(model)
    assert plain is not model and model.training and not plain.training
    x = torch.rand(3, 2)
    torch.testing.assert_close(plain(x), model.eval()(x))


def test_a_nonlinearity_other_than_relu_is_refused():
    model = torch.nn.Sequential(HConv2d(1, 2, 3, in_max_order=0), HNonLinearity(2, fn=torch.tanh))
    with pytest.raises(HNetsError, match="ReLU only"):
        export(model)
