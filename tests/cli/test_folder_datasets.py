"""``--dataset folder:PATH`` end to end through ``hnets.cli.main``, as a user would use it.

A user's folder of generated shapes (three classes, two image sizes, RGB and gray
files, one corrupt file) goes through ``data prepare``, ``data stats``, ``train``,
``test``, ``predict``, ``robustness``, ``equivariance`` and ``export``; Rot-MNIST
written out as PNG files scores through ``folder:`` exactly as the same quantized
images do in memory; bad input gives one ``hnets: error:`` line.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hnets import build_model, get_weights, load_model, save_model
from hnets.cli import main
from hnets.data import ImageDataset, RotMNIST
from hnets.data.registry import FASHION_CLASSES
from hnets.evaluation import evaluate

from ..conftest import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("cross", "disc", "square")  # the folder names, sorted: label order
SIZES = ((40, 40), (56, 48))  # (width, height), alternating
N_TRAIN, N_TEST = 12, 6
QUICK = ["--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress"]


# --- a user's folder ------------------------------------------------------------------------


def shape_image(
    kind: str, size: tuple[int, int], mode: str, rng: np.random.Generator
) -> Image.Image:
    """A square, disc or cross at a random position, size and rotation on a dark ground."""
    width, height = size
    ground = int(rng.integers(0, 40))
    if mode == "RGB":
        img = Image.new("RGB", size, (ground, ground // 2, ground))
        fill = tuple(int(v) for v in rng.integers(150, 256, size=3))
    else:
        img = Image.new("L", size, ground)
        fill = int(rng.integers(170, 256))
    draw = ImageDraw.Draw(img)
    radius = rng.uniform(0.2, 0.3) * min(size)
    cx = rng.uniform(radius + 2, width - radius - 2)
    cy = rng.uniform(radius + 2, height - radius - 2)
    turn = rng.uniform(0, math.pi / 2)

    def rotated(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(turn), math.sin(turn)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if kind == "disc":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif kind == "square":
        r = radius * 0.85
        draw.polygon(rotated([(-r, -r), (r, -r), (r, r), (-r, r)]), fill=fill)
    else:
        t = radius * 0.3
        arm = [(-radius, -t), (radius, -t), (radius, t), (-radius, t)]
        draw.polygon(rotated(arm), fill=fill)
        draw.polygon(rotated([(y, x) for x, y in arm]), fill=fill)
    return img


def make_user_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = CLASSES,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    colour: bool = True,
    corrupt: bool = True,
    sizes: tuple[tuple[int, int], ...] = SIZES,
) -> Path:
    """``root/{train,test}/<class>/NN.png``: every other image RGB (with ``colour``).

    With ``corrupt``, ``root/train/disc/x.png`` is random bytes.
    """
    rng = np.random.default_rng(7)
    for split, count in (("train", n_train), ("test", n_test)):
        for kind in reversed(classes):  # created unsorted: labels follow the sorted names
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                mode = "RGB" if colour and i % 2 == 0 else "L"
                shape_image(kind, sizes[i % len(sizes)], mode, rng).save(folder / f"{i:02d}.png")
    if corrupt:
        (root / "train" / "disc" / "x.png").write_bytes(np.random.default_rng(1).bytes(2000))
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's folder (a space in its name, as users have); never modified by a test."""
    return make_user_folder(tmp_path_factory.mktemp("user") / "my shapes")


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``HNETS_DATA`` -> an empty directory of this test's (the cache of prepared folders)."""
    home = tmp_path / "data"
    monkeypatch.setenv("HNETS_DATA", str(home))
    monkeypatch.delenv("HNETS_MNIST_DIR", raising=False)
    return home


def folder_dirs(data_home: Path) -> list[Path]:
    return sorted(data_home.glob("folder-*")) if data_home.is_dir() else []


def run_ok(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """``hnets ARGV`` must succeed; its stdout."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


# --- 1. a user's folder through every command ----------------------------------------------------


def test_prepare_names_the_corrupt_file_and_skip_bad_builds(shapes, data_home, capsys, tmp_path):
    dataset = f"folder:{shapes}"
    assert main(["data", "prepare", "--dataset", dataset, "--no-progress"]) == 2
    err = one_error_line(capsys)
    assert "x.png" in err and "--skip-bad" in err
    assert folder_dirs(data_home) == []

    out = run_ok(capsys, ["data", "prepare", "--dataset", dataset, "--skip-bad", "--no-progress"])
    n_valid = 3 * round(N_TRAIN / 6)
    assert f"train {3 * N_TRAIN - n_valid}, valid {n_valid}, test {3 * N_TEST}" in out
    assert "classes: cross, disc, square" in out
    (vdir,) = folder_dirs(data_home)
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["channels"] == 3 and manifest["image_size"] == 48  # median of 40 and 56
    assert manifest["source"]["skipped_files"] == ["train/disc/x.png"]

    figures = tmp_path / "stats"
    out = run_ok(
        capsys,
        ["data", "stats", "--dataset", dataset, "--skip-bad", "--out", str(figures)],
    )
    assert "square" in out and f"wrote {figures}" in out
    written = sorted(p.name for p in figures.iterdir())
    assert "class_histogram.png" in written and "samples_test.png" in written
    assert all((figures / name).read_bytes().startswith(b"\x89PNG") for name in written)
    assert folder_dirs(data_home) == [vdir]  # stats found the prepared folder


@pytest.mark.slow
@pytest.mark.parametrize("model", ["hnet", "cnn"])
def test_train_test_predict_study_and_export_a_folder_model(
    model, shapes, data_home, capsys, tmp_path, monkeypatch
):
    dataset = f"folder:{shapes}"
    run = tmp_path / "run"
    out = run_ok(
        capsys,
        ["train", "--dataset", dataset, "--skip-bad", "--model", model, *QUICK, "--out", str(run)],
    )
    assert f"on {3 * N_TEST} my shapes test images" in out
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["in_channels"] == 3 and config["options"]["n_classes"] == 3
    extra = config["extra"]
    assert extra["classes"] == list(CLASSES) and extra["image_shape"] == [3, 48, 48]
    assert extra["dataset"] == f"folder:{shapes.resolve()}"
    (vdir,) = folder_dirs(data_home)

    # test: every test image, classes named as the folders
    report = json.loads(run_ok(capsys, ["test", "--checkpoint", str(run), "--json"]))
    assert report["n"] == 3 * N_TEST and report["classes"] == list(CLASSES)
    assert report["dataset"] == f"folder:{shapes.resolve()}" and len(report["confusion"]) == 3
    summary = json.loads((run / "summary.json").read_text())
    assert report["accuracy"] == summary["test_accuracy"]
    # the same folder named by a relative path, as --dataset: the same cached copy
    monkeypatch.chdir(shapes.parent)
    argv = ["test", "--checkpoint", str(run), "--dataset", f"folder:{shapes.name}", "--json"]
    assert json.loads(run_ok(capsys, argv))["confusion"] == report["confusion"]

    # predict: two of the user's files (one RGB 40x40, one gray 56x48), named classes, and
    # the same probabilities as the model gives the prepared images of those files
    files = [shapes / "test" / "disc" / "00.png", shapes / "test" / "square" / "01.png"]
    rows = [1 * N_TEST + 0, 2 * N_TEST + 1]  # test split order: class, then path
    lines = run_ok(capsys, ["predict", "--checkpoint", str(run), *map(str, files)]).splitlines()
    assert len(lines) == 2
    for line, file in zip(lines, files, strict=True):
        assert line.startswith(f"{file}: ") and line.split(": ")[1].split()[0] in CLASSES
    argv = ["predict", "--checkpoint", str(run), "--top", "3", "--json", *map(str, files)]
    predictions = json.loads(run_ok(capsys, argv))["predictions"]
    net = load_model(run)
    test_set = ImageDataset(vdir, "test")
    with torch.no_grad():
        probs = torch.softmax(net(test_set.images[rows]), dim=1)
    for prediction, p in zip(predictions, probs, strict=True):
        assert prediction["class"] == CLASSES[int(p.argmax())]
        by_label = {r["label"]: r["probability"] for r in prediction["top"]}
        assert by_label == pytest.approx({k: float(p[k]) for k in range(3)}, abs=1e-5)

    # robustness and equivariance on the folder's test images
    studies = tmp_path / "studies"
    table = run_ok(
        capsys,
        [
            "robustness",
            "--checkpoint",
            str(run),
            "--limit",
            "12",
            "--step",
            "90",
            "--out",
            str(studies),
        ],
    )
    result = json.loads((studies / "robustness.json").read_text())
    assert result["angles_degrees"] == [0, 90, 180, 270] and result["n_images"] == 12
    assert result["dataset"] == f"folder:{shapes.resolve()}" and "270" in table
    assert (studies / "robustness.png").read_bytes().startswith(b"\x89PNG")
    if model == "hnet":
        run_ok(
            capsys,
            [
                "equivariance",
                "--checkpoint",
                str(run),
                "--digits",
                "2",
                "--angles",
                "90,45",
                "--out",
                str(studies),
            ],
        )
        report = json.loads((studies / "equivariance.json").read_text())
        assert report["n_digits"] == 2 and max(report["logits"][:1]) < 1e-3  # quarter turn

    # export: plain PyTorch and ONNX agree with the model on the folder's test images
    pytest.importorskip("onnxruntime")
    onnx_file = studies / "m.onnx"
    lines = run_ok(
        capsys,
        ["export", "--checkpoint", str(run), "--onnx", str(onnx_file), "--check-images", "12"],
    )
    assert "on 12 test images" in lines and "ONNX" in lines and onnx_file.is_file()

    # every command used the one prepared copy of the folder
    assert folder_dirs(data_home) == [vdir]


@pytest.mark.slow
def test_a_gray_folder_gives_a_one_channel_model(tmp_path, data_home, capsys):
    gray = make_user_folder(
        tmp_path / "gray", n_train=4, n_test=2, colour=False, corrupt=False, sizes=((30, 30),)
    )
    run = tmp_path / "run"
    argv = ["train", "--dataset", f"folder:{gray}", "--model", "cnn", *QUICK, "--out", str(run)]
    run_ok(capsys, argv)
    config = json.loads((run / "config.json").read_text())
    # one channel is the models' default, so it is not written into the options
    assert config["options"].get("in_channels", 1) == 1 and config["options"]["n_classes"] == 3
    assert config["extra"]["image_shape"] == [1, 28, 28]
    assert load_model(run)(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    report = json.loads(run_ok(capsys, ["test", "--checkpoint", str(run), "--json"]))
    assert report["n"] == 6 and report["classes"] == list(CLASSES)


# --- 2. Rot-MNIST written out as a folder ---------------------------------------------------------


def quantized(images: torch.Tensor) -> torch.Tensor:
    """8-bit images as float32 in [0, 1], as a PNG file of them decodes."""
    return (torch.round(images.double() * 255) / 255).float()


def export_as_folder(images: torch.Tensor, labels: torch.Tensor, split_dir: Path) -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = split_dir / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.round(image[0] * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")


@pytest.fixture
def rotmnist_folder(tmp_path: Path, data_env: Path) -> tuple[Path, RotMNIST]:
    """The stand-in's first 200 test digits (and 3 train digits per class) as PNG files."""
    test = RotMNIST(data_env, "test", limit=200)
    train = RotMNIST(data_env, "train", limit=200)
    picked = torch.cat([torch.nonzero(train.labels == d)[:3, 0] for d in range(10)])
    assert len(picked) == 30
    root = tmp_path / "rotmnist as png"
    export_as_folder(train.images[picked], train.labels[picked], root / "train")
    export_as_folder(test.images, test.labels, root / "test")
    return root, test


@pytest.mark.slow
def test_rotmnist_as_a_folder_scores_exactly_like_the_quantized_images(
    rotmnist_folder, tmp_path, capsys
):
    root, test = rotmnist_folder
    data_dir = tmp_path / "data"
    checkpoint = get_weights("hnet-rotmnist").path()
    shipped = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    report = json.loads(
        run_ok(
            capsys,
            [
                "test",
                "--checkpoint",
                str(checkpoint),
                "--dataset",
                f"folder:{root}",
                "--data-dir",
                str(data_dir),
                "--figure",
                str(tmp_path / "confusion.png"),  # not into the shipped checkpoint
                "--json",
            ],
        )
    )
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == shipped
    assert report["n"] == 200 and report["classes"] == [str(d) for d in range(10)]

    # the folder's test split holds the quantized images, ordered by class then file name
    order = sorted(range(200), key=lambda i: (int(test.labels[i]), i))
    expected_images = quantized(test.images)[order]
    expected_labels = test.labels[order]
    (vdir,) = data_dir.glob("folder-*")
    loaded = ImageDataset(vdir, "test")
    assert loaded.images.dtype == torch.float32 and loaded.images.shape == (200, 1, 28, 28)
    assert torch.equal(loaded.images, expected_images)
    assert torch.equal(loaded.labels, expected_labels)

    model = load_model(checkpoint)
    direct = evaluate(model, expected_images, expected_labels)
    for key in ("n", "correct", "accuracy", "confusion", "per_class_accuracy"):
        assert report[key] == direct[key], key
    assert report["loss"] == pytest.approx(direct["loss"], rel=1e-5)
    # and quantizing to 8 bits costs the model next to nothing against the float images
    unquantized = evaluate(model, test.images, test.labels)
    assert abs(unquantized["correct"] - direct["correct"]) <= 2


def test_a_model_of_other_classes_refuses_the_folder(rotmnist_folder, tmp_path, capsys):
    root, _ = rotmnist_folder
    data_dir = tmp_path / "data"
    fashion = save_model(
        build_model("cnn", width=0.25), tmp_path / "fashion", extra={"dataset": "rotfashion"}
    )
    other = save_model(
        build_model("cnn", width=0.25),
        tmp_path / "letters",
        extra={
            "dataset": f"folder:{tmp_path / 'letters-images'}",
            "classes": list("abcdefghij"),
            "image_shape": [1, 28, 28],
        },
    )
    cases = ((fashion, "rotfashion", FASHION_CLASSES[0]), (other, "folder:", "a, b, c, d"))
    for checkpoint, trained_on, its_classes in cases:
        argv = ["test", "--checkpoint", str(checkpoint), "--dataset", f"folder:{root}"]
        assert main([*argv, "--data-dir", str(data_dir), "--json"]) == 2
        err = one_error_line(capsys)
        assert f"trained on {trained_on}" in err and its_classes in err, err
        assert "has other classes (0, 1, 2, 3" in err, err
    assert not data_dir.exists()  # refused before the folder was prepared


# --- 3. bad input -------------------------------------------------------------------------------


def small_folder(root: Path) -> Path:
    return make_user_folder(
        root, n_train=2, n_test=1, colour=False, corrupt=False, sizes=((16, 16),)
    )


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """An untrained Rot-MNIST CNN checkpoint (for the commands that need one)."""
    return save_model(build_model("cnn", width=0.25), tmp_path / "ckpt")


def _empty_class(root: Path) -> str:
    (small_folder(root) / "train" / "empty").mkdir()
    return f"folder:{root}"


def _class_only_in_test(root: Path) -> str:
    (small_folder(root) / "test" / "star").mkdir()
    shutil.copy(root / "test" / "disc" / "00.png", root / "test" / "star" / "00.png")
    return f"folder:{root}"


BAD_DATASETS = {
    "unknown-name": (lambda root: "nope", 2, "unknown dataset 'nope'"),
    "empty-path": (lambda root: "folder:", 2, "expected folder:PATH"),
    "missing-folder": (lambda root: "folder:/nonexistent/hnets", 2, "no such folder"),
    "empty-class": (_empty_class, 2, "'empty' holds no images"),
    "class-only-in-test": (_class_only_in_test, 2, "class 'star' is not in"),
}
COMMANDS = {
    "prepare": lambda ckpt, out: ["data", "prepare", "--no-progress"],
    "stats": lambda ckpt, out: ["data", "stats", "--out", str(out)],
    "train": lambda ckpt, out: ["train", *QUICK, "--out", str(out)],
    "test": lambda ckpt, out: ["test", "--checkpoint", str(ckpt)],
    "robustness": lambda ckpt, out: ["robustness", "--checkpoint", str(ckpt), "--out", str(out)],
    "equivariance": lambda ckpt, out: [
        "equivariance",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
    ],
    "export": lambda ckpt, out: ["export", "--checkpoint", str(ckpt)],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_a_bad_dataset_is_one_error_line(case, command, tmp_path, data_home, checkpoint, capsys):
    make, code, expected = BAD_DATASETS[case]
    dataset = make(tmp_path / "images")
    out = tmp_path / "out"
    argv = [*COMMANDS[command](checkpoint, out), "--dataset", dataset]
    assert main(argv) == code
    err = one_error_line(capsys)
    assert expected in err, err
    assert not out.exists() and folder_dirs(data_home) == []


@pytest.mark.parametrize(
    ("options", "code", "expected"),
    [
        (["--channels", "2"], 2, "channels must be 1 or 3"),
        (["--image-size", "2"], 2, "at least 4"),
    ],
)
@pytest.mark.parametrize("command", ["prepare", "stats", "train"])
def test_bad_folder_options_are_one_error_line(
    options, code, expected, command, tmp_path, data_home, capsys
):
    images = small_folder(tmp_path / "images")
    out = tmp_path / "out"
    argv = [*COMMANDS[command](None, out), "--dataset", f"folder:{images}", *options]
    assert main(argv) == code
    assert expected in one_error_line(capsys)
    assert not out.exists() and folder_dirs(data_home) == []


@pytest.mark.parametrize("command", ["prepare", "stats", "train"])
@pytest.mark.parametrize("option", [["--image-size", "32"], ["--channels", "3"], ["--skip-bad"]])
def test_folder_options_with_rotmnist_are_one_error_line(
    option, command, tmp_path, data_home, capsys
):
    out = tmp_path / "out"
    argv = [*COMMANDS[command](None, out), "--dataset", "rotmnist", *option]
    assert main(argv) == 1
    err = one_error_line(capsys)
    assert "folder:PATH" in err, err
    assert not out.exists()
