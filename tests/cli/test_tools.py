"""``hnets bench``, ``export``, ``robustness`` and ``equivariance`` from the command line."""

import json

import pytest
import torch

import hnets
from hnets.checkpoint import save_model
from hnets.cli import main

from ..conftest import one_error_line


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(0)
    paths = {}
    for name in ("hnet", "cnn"):
        model = hnets.build_model(name)
        model.train()
        model(torch.rand(8, 1, 28, 28))
        save_model(model.eval(), tmp_path / name)
        paths[name] = tmp_path / name
    return paths


def test_export_writes_checked_onnx_and_torchscript(checkpoints, data_env, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    onnx, script = tmp_path / "m.onnx", tmp_path / "m.pt"
    code = main(
        [
            "export",
            "--checkpoint",
            str(checkpoints["hnet"]),
            "--onnx",
            str(onnx),
            "--torchscript",
            str(script),
            "--check-images",
            "64",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert onnx.stat().st_size > 10_000 and script.stat().st_size > 10_000
    assert "0 predictions changed" in out and "ONNX" in out


def test_robustness_writes_json_csv_and_figure(checkpoints, data_env, tmp_path, capsys):
    out_dir = tmp_path / "rob"
    code = main(
        [
            "robustness",
            "--checkpoint",
            str(checkpoints["hnet"]),
            "--checkpoint",
            str(checkpoints["cnn"]),
            "--limit",
            "40",
            "--step",
            "90",
            "--out",
            str(out_dir),
        ]
    )
    assert code == 0
    result = json.loads((out_dir / "robustness.json").read_text())
    assert result["angles_degrees"] == [0, 90, 180, 270]
    hnet_curve = next(v for k, v in result["accuracy"].items() if k.startswith("hnet"))
    assert len(set(hnet_curve)) == 1  # quarter turns change nothing for the H-Net
    assert (out_dir / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert (out_dir / "robustness.csv").read_text().startswith("angle_degrees,")


def test_equivariance_report(checkpoints, data_env, tmp_path, capsys):
    out_dir = tmp_path / "eqv"
    code = main(
        [
            "equivariance",
            "--checkpoint",
            str(checkpoints["hnet"]),
            "--images",
            "2",
            "--angles",
            "90,30",
            "--out",
            str(out_dir),
        ]
    )
    assert code == 0
    report = json.loads((out_dir / "equivariance.json").read_text())
    assert report["n_digits"] == 2
    assert report["logits"][0] < 1e-5 < report["logits"][1]
    assert (out_dir / "feature_maps.png").stat().st_size > 1000


def test_bench_conv_prints_json_with_ratios(capsys):
    assert main(["bench", "--only", "conv", "--repeats", "1", "--batch-size", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["conv"][0]["ratio"] == 1.0
    names = [row["name"] for row in report["conv"]]
    assert names[2:] == [
        "HConv2d impl=dense",
        "HConv2d impl=dense-nchw",
        "HConv2d impl=gauss",
        "HConv2d impl=karatsuba",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--checkpoint", "/nonexistent/ckpt"], "nonexistent"),
        (["robustness", "--checkpoint", "/nonexistent/ckpt", "--step", "0"], "--step"),
    ],
)
def test_bad_input_is_one_line(args, message, data_env, capsys):
    assert main(args) != 0
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("flag", ["--repeats", "--calls", "--batch-size"])
def test_bench_refuses_counts_below_one(flag, capsys):
    assert main(["bench", "--only", "conv", flag, "0"]) == 2
    assert "at least 1" in one_error_line(capsys)


def test_robustness_of_the_originals_rotates_the_crisp_upright_images(
    checkpoints, data_env, tmp_path, monkeypatch, capsys
):
    from hnets.analysis import crisp, robustness
    from hnets.data import load_dataset

    from ..conftest import MNIST_SOURCE

    monkeypatch.setenv("HNETS_MNIST_DIR", str(MNIST_SOURCE.resolve()))
    seen = []
    real = robustness.robustness_curve

    def spy(model, images, labels, angles, **kwargs):
        seen.append(images)
        return real(model, images, labels, angles, **kwargs)

    monkeypatch.setattr(robustness, "robustness_curve", spy)
    out_dir = tmp_path / "rob"
    args = ["robustness", "--checkpoint", str(checkpoints["hnet"]), "--limit", "40"]
    assert main([*args, "--step", "90", "--originals", "--out", str(out_dir)]) == 0
    test = load_dataset("rotmnist", "test", limit=40)
    originals = crisp.protocol_originals_of(test)
    assert torch.equal(seen[0], originals) and not torch.equal(originals, test.images)
    result = json.loads((out_dir / "robustness.json").read_text())
    assert result["mode"] == "rotation of the unrotated originals"
    (curve,) = result["accuracy"].values()
    assert len(set(curve)) == 1  # exact quarter turns of crisp images: the same predictions
    capsys.readouterr()
    assert main([*args, "--originals", "--by-stored-angle", "--out", str(out_dir)]) != 0
    assert "--originals" in one_error_line(capsys)
