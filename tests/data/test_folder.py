"""A folder of the user's images as a dataset: layout, conversion, defaults, split, cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import hnets.data.folder as folder_module
from hnets.data import ImageDataset, ensure_dataset
from hnets.data.cache import read_manifest
from hnets.data.folder import (
    default_image_size,
    prepare_folder,
    scan_folder,
)
from hnets.errors import DataError
from hnets.images import ImageInfo, load_image_as

# created in this (unsorted) order; labels follow the sorted names
CLASSES = ("square", "disc", "cross")
SIZES = ((20, 20), (40, 30))  # (width, height), alternating


def shape_image(kind: str, size: tuple[int, int], mode: str) -> Image.Image:
    """A light square, disc or cross on black; orange in RGB, white in L."""
    width, height = size
    img = Image.new(mode, size, 0)
    draw = ImageDraw.Draw(img)
    fill = (255, 160, 0) if mode == "RGB" else 255
    box = (3, 3, width - 4, height - 4)
    if kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "disc":
        draw.ellipse(box, fill=fill)
    else:
        draw.line((3, height // 2, width - 4, height // 2), fill=fill, width=3)
        draw.line((width // 2, 3, width // 2, height - 4), fill=fill, width=3)
    return img


def make_folder(
    root: Path,
    *,
    counts: dict[str, int] | None = None,
    n_test: int = 2,
    rgb: bool = True,
    valid: int = 0,
) -> Path:
    """``root/train/<class>``, ``root/test/<class>`` (and ``root/valid`` when ``valid``).

    Image ``i`` of a class has size ``SIZES[i % 2]``; with ``rgb`` every third one
    (``i % 3 == 1``) is RGB, the others L.
    """
    counts = counts or dict.fromkeys(CLASSES, 7)
    plan = [("train", counts), ("test", dict.fromkeys(counts, n_test))]
    if valid:
        plan.append(("valid", dict.fromkeys(counts, valid)))
    for split, per_class in plan:
        for kind, n in per_class.items():
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(n):
                mode = "RGB" if rgb and i % 3 == 1 else "L"
                shape_image(kind, SIZES[i % 2], mode).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "my shapes")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def leftovers(data_dir: Path) -> list[str]:
    return sorted(os.listdir(data_dir)) if data_dir.exists() else []


def array_hashes(vdir: Path) -> dict[str, str]:
    manifest = read_manifest(vdir)
    return {
        f"{split}/{name}": meta["sha256"]
        for split, entry in manifest["splits"].items()
        for name, meta in entry["files"].items()
    }


def corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    return path


# --- layout and errors -------------------------------------------------------------------


def test_corrupt_file_is_named_and_nothing_is_written(shapes, data_dir):
    corrupt(shapes / "train" / "disc" / "broken.png")
    with pytest.raises(DataError) as info:
        prepare_folder(shapes, data_dir, progress=False)
    message = str(info.value)
    assert "broken.png" in message and "--skip-bad" in message and "\n" not in message
    assert leftovers(data_dir) == []


def test_skip_bad_builds_and_counts_the_skipped_files(shapes, data_dir, capsys):
    corrupt(shapes / "train" / "disc" / "broken.png")
    corrupt(shapes / "test" / "cross" / "also-broken.jpg")
    vdir = prepare_folder(shapes, data_dir, skip_bad=True, progress=True)
    source = read_manifest(vdir)["source"]
    assert source["skipped"] == 2 and source["files"] == 3 * 9 + 2
    assert source["skipped_files"] == ["train/disc/broken.png", "test/cross/also-broken.jpg"]
    assert "skipped 2 files" in capsys.readouterr().err
    sizes = read_manifest(vdir)["sizes"]
    assert sizes["train"] + sizes["valid"] == 21 and sizes["test"] == 6
    assert leftovers(data_dir) == [vdir.name]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda root: (root / "train" / "empty").mkdir(), "'empty' holds no images"),
        (lambda root: (root / "test" / "star").mkdir(), "'star' is not in"),
        (lambda root: (root / "valid" / "star").mkdir(parents=True), "'star' is not in"),
        (lambda root: os.rename(root / "test", root / "testing"), "no test/ folder"),
        (lambda root: os.rename(root / "train", root / "training"), "no train/ folder"),
        (lambda root: (root / "valid").mkdir(), "valid: no class folders"),
    ],
    ids=[
        "empty-class",
        "class-only-in-test",
        "class-only-in-valid",
        "no-test",
        "no-train",
        "no-valid-classes",
    ],
)
def test_layout_errors_are_one_line_and_leave_nothing(shapes, data_dir, damage, expected):
    damage(shapes)
    with pytest.raises(DataError, match=expected) as info:
        prepare_folder(shapes, data_dir, progress=False)
    assert "\n" not in str(info.value)
    assert leftovers(data_dir) == []


def test_an_empty_class_is_named_even_with_a_hidden_file(shapes, data_dir):
    (shapes / "train" / "empty").mkdir()
    (shapes / "train" / "empty" / ".DS_Store").write_bytes(b"\0\1")
    with pytest.raises(DataError, match=r"empty.*holds no images"):
        prepare_folder(shapes, data_dir, progress=False)


def test_a_class_of_only_bad_files_is_an_error_even_when_skipping(shapes, data_dir):
    (shapes / "train" / "junk").mkdir()
    corrupt(shapes / "train" / "junk" / "a.png")
    with pytest.raises(DataError, match="'junk' holds no decodable images"):
        prepare_folder(shapes, data_dir, skip_bad=True, progress=False)
    assert leftovers(data_dir) == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [({"image_size": 3}, "at least 4"), ({"channels": 2}, "1 or 3"), ({"channels": 4}, "1 or 3")],
)
def test_bad_options(shapes, data_dir, options, expected):
    with pytest.raises(DataError, match=expected):
        prepare_folder(shapes, data_dir, progress=False, **options)
    assert leftovers(data_dir) == []


def test_missing_or_non_folder_path(tmp_path, data_dir):
    with pytest.raises(DataError, match="no such folder"):
        prepare_folder(tmp_path / "absent", data_dir, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        prepare_folder(tmp_path / "file", data_dir, progress=False)
    assert leftovers(data_dir) == []


def test_hidden_and_loose_files_are_ignored(shapes, data_dir):
    corrupt(shapes / "train" / "disc" / ".hidden.png")
    (shapes / "train" / "README.txt").write_text("loose files next to the class folders")
    (shapes / "train" / ".cache").mkdir()
    scan = scan_folder(shapes)
    assert scan.classes == ("cross", "disc", "square")
    assert all(".hidden" not in rel and "README" not in rel for _, _, rel in scan.paths())
    prepare_folder(shapes, data_dir, progress=False)  # no skip_bad needed


# --- conversion and defaults --------------------------------------------------------------


def test_classes_shapes_labels_and_values(shapes, data_dir):
    vdir = prepare_folder(shapes, data_dir, progress=False)
    manifest = read_manifest(vdir)
    # longer sides: 15 x 20 and 12 x 40, median 20: already a multiple of 4
    assert manifest["channels"] == 3 and manifest["image_size"] == 20
    assert manifest["title"] == "my shapes" and vdir.name.startswith("folder-my-shapes-")
    assert manifest["source"]["path"] == str(shapes.resolve())
    test = ImageDataset(vdir, "test")
    assert test.classes == ("cross", "disc", "square")
    assert tuple(test.images.shape) == (6, 3, 20, 20)
    assert test.images.dtype.is_floating_point and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert float(test.images.min()) >= 0.0 and float(test.images.max()) <= 1.0
    # in class, then path order; each sample is its file converted
    files = scan_folder(shapes).files["test"]
    for row, (label, rel) in enumerate(files):
        assert test.labels[row] == label and rel.split("/")[1] == test.classes[label]
        expected = load_image_as(shapes / rel, size=20, channels=3)
        np.testing.assert_array_equal(test.images[row].numpy(), expected)
    for split in ("train", "valid"):
        ds = ImageDataset(vdir, split)
        assert tuple(ds.images.shape[1:]) == (3, 20, 20) and ds.angles is None


def test_a_gray_image_in_a_colour_dataset_has_equal_channels(shapes, data_dir):
    test = ImageDataset(prepare_folder(shapes, data_dir, progress=False), "test")
    gray = test.images[0]  # test/cross/00.png is L
    assert Image.open(shapes / "test" / "cross" / "00.png").mode == "L"
    assert float(gray.max()) > 0.5
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])
    orange = test.images[1]  # 01.png is RGB orange: red > green > blue
    assert orange[0].sum() > orange[1].sum() > orange[2].sum()


def test_an_all_gray_folder_gives_one_channel_at_28(tmp_path, data_dir):
    root = make_folder(tmp_path / "gray", rgb=False)
    deep = np.linspace(1000, 1400, 30 * 40).reshape(30, 40).astype(np.uint16)
    Image.fromarray(deep).save(root / "train" / "disc" / "deep.png")  # 16-bit
    Image.fromarray(np.full((10, 10), 200, np.uint8)).convert("P").save(
        root / "train" / "disc" / "palette.png"  # gray palette
    )
    vdir = prepare_folder(root, data_dir, progress=False)
    manifest = read_manifest(vdir)
    assert manifest["channels"] == 1 and manifest["image_size"] == 28
    assert manifest["image_shape"] == [1, 28, 28]
    train = ImageDataset(vdir, "train+valid")
    assert tuple(train.images.shape) == (23, 1, 28, 28)


def test_asked_for_sizes_and_channels_win(shapes, data_dir):
    vdir = prepare_folder(shapes, data_dir, channels=1, progress=False)
    assert read_manifest(vdir)["image_shape"] == [1, 28, 28]  # gray: 28 by default
    vdir = prepare_folder(shapes, data_dir, channels=3, image_size=12, progress=False)
    assert read_manifest(vdir)["image_shape"] == [3, 12, 12]


@pytest.mark.parametrize(
    ("sides", "expected"),
    [([20, 40, 40], 40), ([30], 32), ([29], 28), ([10, 12], 16), ([500, 900], 128), ([18], 20)],
)
def test_default_image_size_rule(sides, expected):
    infos = [ImageInfo(side, side // 2, "RGB", True) for side in sides]
    assert default_image_size(infos, 3) == expected
    assert default_image_size(infos, 1) == 28


# --- validation split --------------------------------------------------------------------


def test_valid_is_a_stratified_sixth_of_train_and_reproducible(tmp_path, capsys):
    root = make_folder(tmp_path / "f", counts={"square": 13, "disc": 3, "cross": 1})
    first = prepare_folder(root, tmp_path / "a", progress=True)
    assert "no valid/ folder: holding out 3 train images" in capsys.readouterr().err
    manifest = read_manifest(first)
    assert manifest["valid_from"] == "train (stratified 1/6, seed 0)"
    valid, train = ImageDataset(first, "valid"), ImageDataset(first, "train")
    # round(13/6) = 2 squares, round(3/6) = 1 disc (half up), no cross (only one image)
    assert valid.labels.tolist() == [1, 2, 2]
    assert np.bincount(train.labels.numpy()).tolist() == [1, 2, 11]
    again = prepare_folder(root, tmp_path / "b", progress=False)
    assert array_hashes(again) == array_hashes(first)
    other = prepare_folder(root, tmp_path / "c", seed=1, progress=False)
    assert other.name != first.name
    hashes, other_hashes = array_hashes(first), array_hashes(other)
    assert other_hashes["valid/images"] != hashes["valid/images"]
    assert other_hashes["test/images"] == hashes["test/images"]


def test_valid_comes_from_the_folder_when_present(tmp_path, data_dir, capsys):
    root = make_folder(tmp_path / "f", valid=2)
    vdir = prepare_folder(root, data_dir, progress=True)
    assert "no valid/" not in capsys.readouterr().err
    manifest = read_manifest(vdir)
    assert manifest["valid_from"] == "folder"
    assert manifest["sizes"] == {"train": 21, "valid": 6, "test": 6}
    # the seed plays no part then
    assert prepare_folder(root, data_dir, seed=5, progress=False) == vdir


# --- the cache ---------------------------------------------------------------------------


def test_a_second_call_returns_the_cached_dir_without_decoding(shapes, data_dir, monkeypatch):
    vdir = prepare_folder(shapes, data_dir, progress=False)
    stamp = (vdir / "manifest.json").stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("decoded an image on a cache hit")

    monkeypatch.setattr(folder_module, "load_image_as", refuse)
    monkeypatch.setattr(folder_module, "image_info", refuse)
    assert prepare_folder(shapes, data_dir, progress=False) == vdir
    assert (vdir / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="decoded"):
        prepare_folder(shapes, data_dir, force=True, progress=False)


@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_request_for_the_resolved_sizes_finds_the_copy_made_with_defaults(
    shapes, data_dir, monkeypatch, skip_bad
):
    vdir = prepare_folder(shapes, data_dir, skip_bad=skip_bad, progress=False)
    manifest = read_manifest(vdir)
    resolved = {"image_size": manifest["image_size"], "channels": manifest["channels"]}

    def refuse(*args, **kwargs):
        raise AssertionError("decoded an image on a cache hit")

    monkeypatch.setattr(folder_module, "load_image_as", refuse)
    monkeypatch.setattr(folder_module, "image_info", refuse)
    assert prepare_folder(shapes, data_dir, skip_bad=skip_bad, progress=False, **resolved) == vdir
    other = {**resolved, "image_size": resolved["image_size"] + 4}
    with pytest.raises(AssertionError, match="decoded"):  # another size: a new copy
        prepare_folder(shapes, data_dir, skip_bad=skip_bad, progress=False, **other)
    with pytest.raises(AssertionError, match="decoded"):  # other options than the copy's
        prepare_folder(shapes, data_dir, skip_bad=not skip_bad, progress=False, **resolved)
    shape_image("disc", (20, 20), "L").save(shapes / "test" / "disc" / "new.png")
    with pytest.raises(AssertionError, match="decoded"):  # other content
        prepare_folder(shapes, data_dir, skip_bad=skip_bad, progress=False, **resolved)


def test_changed_added_or_removed_files_give_a_new_dir(shapes, data_dir):
    first = prepare_folder(shapes, data_dir, progress=False)
    shape_image("disc", (20, 20), "L").rotate(45).save(shapes / "train" / "cross" / "00.png")
    second = prepare_folder(shapes, data_dir, progress=False)
    shape_image("disc", (20, 20), "L").save(shapes / "test" / "disc" / "new.png")
    third = prepare_folder(shapes, data_dir, progress=False)
    (shapes / "train" / "square" / "03.png").unlink()
    fourth = prepare_folder(shapes, data_dir, progress=False)
    assert len({first, second, third, fourth}) == 4
    assert read_manifest(third)["sizes"]["test"] == 7
    assert sorted(leftovers(data_dir)) == sorted(p.name for p in (first, second, third, fourth))


def test_the_key_covers_the_content_not_the_location(shapes, tmp_path):
    """A renamed file is a different dataset; a copy of the folder elsewhere is the same."""
    first = prepare_folder(shapes, tmp_path / "a", progress=False)
    copy = tmp_path / "elsewhere" / "my shapes"
    copy.parent.mkdir()
    os.rename(shapes, copy)
    assert prepare_folder(copy, tmp_path / "a", progress=False) == first
    os.rename(copy / "test" / "disc" / "00.png", copy / "test" / "disc" / "zz.png")
    assert prepare_folder(copy, tmp_path / "a", progress=False) != first


# --- the rest of hnets -------------------------------------------------------------------


def test_ensure_dataset_builds_a_folder(shapes, tmp_path):
    vdir = ensure_dataset(tmp_path / "d", dataset="folder:" + str(shapes), image_size=16)
    train = ImageDataset(vdir, "train")
    assert tuple(train.images.shape[1:]) == (3, 16, 16)
    assert train.name == "folder:" + str(shapes.resolve()) and train.title == "my shapes"
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["dataset"] == manifest["variant"] == "folder"
    key = manifest["source"]["key"]
    assert len(key) == 64 and vdir.name.endswith(key[:12])
