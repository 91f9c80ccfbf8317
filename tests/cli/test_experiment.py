"""``hnets train``, ``test`` and ``predict`` end to end through ``hnets.cli.main``."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from hnets import build_model, save_model
from hnets.cli import build_parser, main
from hnets.data import RotMNIST
from hnets.errors import HNetsError
from hnets.training import TrainConfig

from ..conftest import MNIST_SOURCE, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = [
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--limit-train",
    "64",
    "--limit-eval",
    "100",
    "--device",
    "cpu",
    "--no-progress",
]


def digit_png(path, index: int) -> str:
    """A stand-in test digit, enlarged and saved as an 8-bit PNG (as a user would have it)."""
    image = RotMNIST(None, "test", variant="standin", limit=index + 1).images[index, 0]
    pixels = (image.numpy() * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((112, 112), Image.BILINEAR).save(path)
    return str(path)


@pytest.mark.slow
def test_prepare_train_test_predict_resume(tmp_path, data_env, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "prepare", "--from-mnist", str(MNIST_SOURCE), "--no-progress"]) == 0
    capsys.readouterr()

    hnet = tmp_path / "hnet-run"
    assert main(["train", "--model", "hnet", "--width", "0.5", *QUICK, "--out", str(hnet)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and str(hnet) in out
    for name in (
        "model.safetensors",
        "config.json",
        "checkpoint.pt",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
    ):
        assert (hnet / name).is_file(), name
    summary = json.loads((hnet / "summary.json").read_text())
    assert f"{summary['test_accuracy']:.2%}" in out and summary["test_n"] == 100

    # the cnn goes to the default directory runs/cnn
    assert main(["train", "--model", "cnn", "--width", "0.5", *QUICK]) == 0
    capsys.readouterr()
    cnn = tmp_path / "runs" / "cnn"
    assert json.loads((cnn / "summary.json").read_text())["config"]["model"] == "cnn"

    # test --json: one JSON object on stdout and nothing else
    assert main(["test", "--checkpoint", str(hnet), "--limit", "50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 50 and report["error"] == pytest.approx(1 - report["accuracy"])
    assert report["variant"] == "standin" and len(report["confusion"]) == 10
    assert report["figure"] is None
    # the full test split slice agrees with the summary written by training; without
    # --figure nothing is written, not even the evaluation training made
    before = {p.name: p.read_bytes() for p in hnet.iterdir()}
    for other in ([], ["--eval-blur", "0"], ["--split", "valid"]):
        argv = ["test", "--checkpoint", str(hnet), "--limit", "100", *other, "--json"]
        assert main(argv) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["figure"] is None
        if not other:
            assert report["accuracy"] == summary["test_accuracy"]
    assert {p.name: p.read_bytes() for p in hnet.iterdir()} == before

    figure = tmp_path / "figs" / "cm.png"
    assert (
        main(
            [
                "test",
                "--checkpoint",
                str(cnn),
                "--split",
                "valid",
                "--limit",
                "40",
                "--figure",
                str(figure),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "accuracy" in text and "per-class accuracy" in text and "confusion matrix" in text
    assert "valid split, 40 images" in text and figure.is_file()

    images = [digit_png(tmp_path / f"digit{i}.png", i) for i in range(3)]
    assert main(["predict", "--checkpoint", str(cnn), *images, "--top", "2", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["path"] for p in predictions] == images
    assert all(len(p["top"]) == 2 and 0 <= p["label"] <= 9 for p in predictions)
    assert main(["predict", "--checkpoint", str(cnn), *images]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(
        line.startswith(path) for line, path in zip(lines, images, strict=True)
    )

    # resume: options not given come from the saved run; --epochs extends it
    assert main(["train", "--out", str(hnet), "--resume", "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    rows = (hnet / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    resumed = json.loads((hnet / "summary.json").read_text())
    assert resumed["epochs"] == 2 and resumed["config"]["model_options"] == {
        "width": 0.5,
        "eval_blur": 0.5,
    }
    assert resumed["config"]["limit_train"] == 64


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--model", "resnet"], "unknown model 'resnet'", 1),
        (["--schedule", "linear"], "schedule must be one of", 1),
        (["--epochs", "0"], "epochs must be an integer >= 1", 1),
        (["--width", "0.5", "--max-order", "-1"], "'max_order': -1", 1),
        (["--model", "hnet", "--model-channels", "8,16"], "must be 3 positive integers", 1),
        (["--model", "cnn", "--model-channels", "8,0,8,8,8,8"], "6 positive integers", 1),
    ],
)
def test_bad_training_options_are_one_line(tmp_path, data_env, capsys, args, message, code):
    out = tmp_path / "run"
    assert main(["train", *QUICK, *args, "--out", str(out)]) == code
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_model_channels_that_are_not_integers_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--model-channels", "8,x,32"])
    assert info.value.code == 2
    err = one_error_line(capsys)
    assert "argument --model-channels: expected integers separated by commas, got '8,x,32'" in err


def test_model_channels_place_the_width_and_are_saved_with_the_run(tmp_path, data_env, capsys):
    import hnets

    out = tmp_path / "run"
    args = ["--model", "hnet", "--model-channels", "4,6,10", "--width", "1", "--out", str(out)]
    assert main(["train", *QUICK, *args]) == 0
    capsys.readouterr()
    options = json.loads((out / "summary.json").read_text())["config"]["model_options"]
    assert options["channels"] == [4, 6, 10] and options["width"] == 1.0
    model = hnets.load_model(out)
    convs = [m for m in model.modules() if isinstance(m, hnets.nn.HConv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 6, 6, 10, 10, 10]


def test_an_existing_run_is_refused_and_left_alone(tmp_path, data_env, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert main(["train", "--model", "cnn", *QUICK, "--out", str(out)]) == 2
    assert "already holds a run" in one_error_line(capsys)
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]
    assert main(["train", "--model", "cnn", *QUICK, "--out", str(out), "--resume"]) == 2
    assert "no checkpoint.pt" in one_error_line(capsys)
    with pytest.raises(SystemExit) as info:  # argparse: the two exclude each other
        main(["train", "--out", str(out), "--resume", "--overwrite"])
    assert info.value.code == 2


@pytest.fixture
def model_dir(tmp_path):
    return save_model(
        build_model("cnn", width=0.5), tmp_path / "model", extra={"data_variant": "standin"}
    )


def test_bad_checkpoints_are_one_line(tmp_path, data_env, capsys, model_dir):
    assert main(["test", "--checkpoint", str(tmp_path / "absent")]) == 2
    assert "no such checkpoint directory" in one_error_line(capsys)
    save_model(build_model("hnet", width=0.5), tmp_path / "hnet")
    (model_dir / "model.safetensors").write_bytes(
        (tmp_path / "hnet" / "model.safetensors").read_bytes()
    )
    for argv in (
        ["test", "--checkpoint", str(model_dir)],
        ["predict", "--checkpoint", str(model_dir), "x.png"],
    ):
        assert main(argv) == 2
        assert "do not belong to model 'cnn'" in one_error_line(capsys)
    (model_dir / "model.safetensors").unlink()
    assert main(["test", "--checkpoint", str(model_dir)]) == 2
    assert "model.safetensors: file not found" in one_error_line(capsys)
    assert main(["test", "--checkpoint", str(tmp_path / "hnet"), "--split", "train"]) == 1
    assert "--split must be valid or test" in one_error_line(capsys)
    with pytest.raises(HNetsError):  # --debug shows the real exception
        main(["--debug", "test", "--checkpoint", str(tmp_path / "absent")])


def test_bad_images_are_one_line_naming_the_file(tmp_path, data_env, capsys, model_dir):
    good = tmp_path / "good.png"
    Image.new("L", (30, 30), 0).save(good)
    full = (tmp_path / "good.png").read_bytes()
    cases = {
        "truncated.png": full[: len(full) // 2],
        "notes.txt": b"just some text\n",
        "random.jpg": np.random.default_rng(1).bytes(3000),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert main(["predict", "--checkpoint", str(model_dir), str(tmp_path / name)]) == 2
        assert name in one_error_line(capsys)
    assert main(["predict", "--checkpoint", str(model_dir), str(good)]) == 2  # all black
    assert "no digit" in one_error_line(capsys)
    assert main(["predict", "--checkpoint", str(model_dir), str(tmp_path / "absent.png")]) == 2
    assert "no such file" in one_error_line(capsys)


def test_train_no_test_reports_validation_only(tmp_path, data_env, capsys):
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "train",
                "--model",
                "cnn",
                "--train-split",
                "train",
                "--no-test",
                "--out",
                str(out),
                *QUICK,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "test split not read (--no-test)" in printed and "best validation accuracy" in printed
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] is None


#: ``hnets train``'s flags as the parser listed them before they were generated from
#: TrainConfig's fields (commit 4b6f9c4ec53f5d7bca7cc31e35ec3e006c3d7ea1).
TRAIN_FLAGS_BEFORE = [
    "-h",
    "--help",
    "--model",
    "--epochs",
    "--batch-size",
    "--lr",
    "--schedule",
    "--warmup-epochs",
    "--optimizer",
    "--weight-decay",
    "--label-smoothing",
    "--augment",
    "--no-augment",
    "--train-split",
    "--width",
    "--max-order",
    "--seed",
    "--device",
    "--amp",
    "--no-amp",
    "--compile",
    "--no-compile",
    "--dataset",
    "--data-dir",
    "--variant",
    "--image-size",
    "--channels",
    "--skip-bad",
    "--limit-train",
    "--train-size",
    "--limit-eval",
    "--eval-batch-size",
    "--num-workers",
    "--test",
    "--no-test",
    "--out",
    "--resume",
    "--overwrite",
    "--no-progress",
]


def train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_hnets_train_keeps_every_flag_it_had():
    flags = [s for action in train_parser()._actions for s in action.option_strings]
    assert len(flags) == len(set(flags))
    # --skip-bad is a boolean setting like the others now, so it gained its negation;
    # --quarter-turns, --eval-blur, --valid-every, --model-channels and --model-options
    # were added since
    added = {
        "--quarter-turns",
        "--eval-blur",
        "--valid-every",
        "--model-channels",
        "--model-options",
    }
    assert set(flags) == {*TRAIN_FLAGS_BEFORE, "--no-skip-bad", *added}


def test_hnets_train_has_a_flag_per_setting_typed_and_documented_by_the_field():
    parser = train_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_options":  # set by --width and --max-order
            assert {"width", "max_order"} <= set(by_dest)
            continue
        action = by_dest[f.name]
        assert action.default is argparse.SUPPRESS, f.name
        assert action.help.startswith(f.metadata["help"].replace("%", "%%")), f.name
    assert by_dest["data_variant"].option_strings == ["--variant"]
    assert "(default 90)" in by_dest["epochs"].help and "(default on)" in by_dest["augment"].help
    args = parser.parse_args(
        ["--epochs", "3", "--lr", "0.1", "--variant", "standin", "--no-augment", "--skip-bad"]
        + ["--limit-train", "5", "--width", "0.5", "--dataset", "rotfashion"]
    )
    given = {k: v for k, v in vars(args).items() if k in by_dest and k != "help"}
    assert given == {
        "epochs": 3,
        "lr": 0.1,
        "data_variant": "standin",
        "augment": False,
        "skip_bad": True,
        "limit_train": 5,
        "width": 0.5,
        "dataset": "rotfashion",
        "out": None,
        "resume": False,
        "overwrite": False,
        "no_progress": False,
    }
    assert parser.parse_args(["--no-skip-bad", "--test"]).skip_bad is False


def test_test_crisp_scores_the_unrotated_originals(tmp_path, data_env, capsys, model_dir,
                                                    monkeypatch):  # fmt: skip
    """``hnets test --crisp``: the split's originals (which rotate into the stored images)
    and their quarter turns, beside the stored images; refused in one line without the
    idx files, before anything is written."""
    from hnets.analysis import protocol_originals_of
    from hnets.data import rotate_images

    monkeypatch.setenv("HNETS_MNIST_DIR", str(MNIST_SOURCE))
    valid = RotMNIST(None, "valid", variant="standin", limit=50)
    originals = protocol_originals_of(valid)
    assert originals.shape == valid.images.shape
    turned = rotate_images(originals, valid.angles)  # the protocol's own step
    torch.testing.assert_close(turned, valid.images, rtol=0, atol=1 / 255 + 1e-6)
    assert (originals - valid.images).abs().max() > 0.5  # and they were rotated

    figure = tmp_path / "c.png"
    argv = ["test", "--checkpoint", str(model_dir), "--split", "valid", "--limit", "200",
            "--crisp", "--figure", str(figure)]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    crisp = report["crisp"]
    assert set(crisp) == {"rotated", "crisp_0", "crisp_90", "crisp_180", "crisp_270"}
    assert crisp["rotated"] == pytest.approx(report["accuracy"])
    assert all(0.0 <= v <= 1.0 for v in crisp.values())
    assert main(argv) == 0
    assert "crisp inputs: as stored" in capsys.readouterr().out

    figure.unlink()
    monkeypatch.delenv("HNETS_MNIST_DIR")
    from hnets.data.registry import DATASETS

    source = dataclasses.replace(DATASETS["rotmnist"].source, system_dirs=())
    monkeypatch.setitem(DATASETS, "rotmnist", dataclasses.replace(DATASETS["rotmnist"],
                                                                  source=source))  # fmt: skip
    assert main(argv) == 2
    assert "crisp originals need the Rot-MNIST idx files" in one_error_line(capsys)
    assert not figure.exists()


def test_model_options_take_a_json_object_and_refuse_anything_else(capsys):
    args = train_parser().parse_args(["--model-options", '{"depth": 1, "pool": [2, 1]}'])
    assert args.model_options_json == {"depth": 1, "pool": [2, 1]}
    for bad in ("[1, 2]", "{depth: 1}"):
        with pytest.raises(SystemExit) as exc:
            main(["train", "--model-options", bad])
        assert exc.value.code == 2
        assert "--model-options: not a JSON object" in capsys.readouterr().err
