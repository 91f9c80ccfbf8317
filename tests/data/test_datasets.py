"""The dataset registry, Rot-Fashion-MNIST (local files, system dir, download), bad input."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from hnets.cli import main
from hnets.data import (
    DATASETS,
    ImageDataset,
    RotMNIST,
    dataset_stats,
    download_idx,
    ensure_dataset,
    get_dataset,
    load_dataset,
    prepare_from_idx,
)
from hnets.data import idx as idx_module
from hnets.data import protocol as protocol_module
from hnets.data.cache import SplitArrays, read_manifest, staging_dir, write_variant
from hnets.data.registry import FASHION_CLASSES
from hnets.errors import DataError
from tests.conftest import one_error_line

FASHION_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fashion-mnist"
STEMS = tuple(DATASETS["rotfashion"].source.files)


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST files not found at {FASHION_DIR}")
    return FASHION_DIR.resolve()


@pytest.fixture(scope="session")
def fashion_root(fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with Rot-Fashion-MNIST (seed 0), built once per session."""
    root = tmp_path_factory.mktemp("rotfashion-data")
    prepare_from_idx(fashion_dir, root, dataset="rotfashion", progress=False)
    return root


# --- the registry ------------------------------------------------------------------------


def test_the_registry_names_every_dataset_its_variants_and_classes() -> None:
    assert list(DATASETS) == ["rotmnist", "rotfashion"]
    assert get_dataset("rotmnist").classes == tuple("0123456789")
    fashion = get_dataset("rotfashion")
    assert fashion.classes[5] == "Sandal" and fashion.classes[9] == "Ankle boot"
    assert len(fashion.classes) == 10 and fashion.image_shape == (1, 28, 28)
    assert fashion.variants == ("rotated", "upright") and not fashion.is_standin("rotated")
    assert get_dataset("rotmnist").is_standin("standin")
    assert not get_dataset("rotmnist").is_standin("original")
    with pytest.raises(DataError, match=r"unknown dataset 'nope': .*rotmnist, rotfashion"):
        get_dataset("nope")
    with pytest.raises(DataError, match="unknown Rot-Fashion-MNIST variant 'standin'"):
        fashion.check_variant("standin")


# --- Rot-Fashion-MNIST --------------------------------------------------------------------


def test_rotfashion_follows_the_rot_mnist_protocol(fashion_root: Path, fashion_dir: Path) -> None:
    vdir = fashion_root / "rotfashion-rotated"
    manifest = read_manifest(vdir)
    assert manifest["dataset"] == "rotfashion" and manifest["variant"] == "rotated"
    assert manifest["sizes"] == {"train": 10_000, "valid": 2_000, "test": 50_000}
    assert manifest["classes"] == list(FASHION_CLASSES)
    assert manifest["source"]["md5"] == DATASETS["rotfashion"].source.files
    test = load_dataset("rotfashion", "test", root=fashion_root)
    assert test.classes == FASHION_CLASSES and test.title == "Rot-Fashion-MNIST"
    assert test.images.shape == (50_000, 1, 28, 28) and not test.standin
    assert float(test.images.min()) >= 0.0 and float(test.images.max()) <= 1.0
    assert float(test.angles.min()) >= 0.0 and float(test.angles.max()) < 2 * np.pi
    assert np.bincount(test.labels.numpy(), minlength=10).min() > 4_000  # all classes present
    # the same draws as the Rot-MNIST stand-in: which training-file images go where
    arrays = idx_module.load_idx_files(fashion_dir, DATASETS["rotfashion"].source)
    rng = np.random.default_rng(0)
    idx = protocol_module.standin_indices(rng, 60_000)
    train = ImageDataset(vdir, "train")
    assert train.labels.tolist() == arrays.train_labels[idx["train"]].tolist()


def test_rotfashion_is_byte_identical_for_a_seed_and_upright_shares_its_images(
    fashion_root: Path, fashion_dir: Path, tmp_path: Path, kit
) -> None:
    again = prepare_from_idx(fashion_dir, tmp_path / "a", dataset="rotfashion", progress=False)
    assert kit.digests(again) == kit.digests(fashion_root / "rotfashion-rotated")
    upright = prepare_from_idx(
        fashion_dir, tmp_path / "a", dataset="rotfashion", upright=True, progress=False
    )
    assert upright.name == "rotfashion-upright"
    rotated, straight = (ImageDataset(d, "train", limit=50) for d in (again, upright))
    assert rotated.labels.tolist() == straight.labels.tolist()
    assert float(straight.angles.abs().max()) == 0.0
    first = arrays_first_train_image(fashion_dir)
    assert np.array_equal(straight.images[0, 0].numpy(), first)  # unrotated, exactly
    assert kit.digests(upright)["test/images"] == kit.digests(again)["test/images"]


def arrays_first_train_image(fashion_dir: Path) -> np.ndarray:
    arrays = idx_module.load_idx_files(fashion_dir, DATASETS["rotfashion"].source)
    idx = protocol_module.standin_indices(np.random.default_rng(0), 60_000)
    return arrays.train_images[idx["train"][0]].astype(np.float32) / np.float32(255.0)


def test_rotfashion_is_found_in_the_environment_or_a_system_directory(
    fashion_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HNETS_FASHION_DIR", raising=False)
    spec = DATASETS["rotfashion"]
    system = dataclasses.replace(spec.source, system_dirs=(str(fashion_dir),))
    monkeypatch.setitem(DATASETS, "rotfashion", dataclasses.replace(spec, source=system))
    assert idx_module.find_idx_dir(DATASETS["rotfashion"]) == fashion_dir
    monkeypatch.setenv("HNETS_FASHION_DIR", str(tmp_path / "elsewhere"))
    assert idx_module.find_idx_dir(DATASETS["rotfashion"]) == tmp_path / "elsewhere"
    assert idx_module.find_idx_dir(DATASETS["rotfashion"], "given") == Path("given")
    monkeypatch.setenv("HNETS_FASHION_DIR", str(fashion_dir))
    vdir = ensure_dataset(tmp_path / "d", dataset="rotfashion", progress=False)
    assert vdir == tmp_path / "d" / "rotfashion-rotated"


def test_missing_rotfashion_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HNETS_FASHION_DIR", raising=False)
    spec = DATASETS["rotfashion"]
    nowhere = dataclasses.replace(spec.source, system_dirs=(str(tmp_path / "none"),))
    monkeypatch.setitem(DATASETS, "rotfashion", dataclasses.replace(spec, source=nowhere))
    with pytest.raises(DataError) as info:
        load_dataset("rotfashion", "test", root=tmp_path / "d")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--from-idx" in message
    assert spec.source.url in message and "\n" not in message
    assert not (tmp_path / "d").exists()


# --- download (a local server on 127.0.0.1 only) ---------------------------------------------


def _serve_fashion(http_server, fashion_dir: Path, broken: str | None = None) -> str:
    for stem in STEMS:
        body = (fashion_dir / f"{stem}.gz").read_bytes()
        if stem == broken:
            body = gzip.compress(gzip.decompress(body)[:-1] + b"\x01")  # one byte changed
        http_server.serve(f"/fm/{stem}.gz", body)
    return http_server.url("/fm/")


def _gz_md5s(fashion_dir: Path) -> dict[str, str]:
    return {s: hashlib.md5((fashion_dir / f"{s}.gz").read_bytes()).hexdigest() for s in STEMS}


def test_download_then_build(tmp_path: Path, http_server, fashion_dir: Path, kit) -> None:
    url = _serve_fashion(http_server, fashion_dir)
    root = tmp_path / "data"
    got = download_idx(
        DATASETS["rotfashion"], root, url=url, gz_md5=_gz_md5s(fashion_dir), progress=False
    )
    assert got == root / "downloads" / "rotfashion"
    assert sorted(p.name for p in got.iterdir()) == sorted(f"{s}.gz" for s in STEMS)
    vdir = prepare_from_idx(got, root, dataset="rotfashion", progress=False)
    assert read_manifest(vdir)["sizes"]["test"] == 50_000


def test_a_download_with_the_wrong_checksum_leaves_nothing(
    tmp_path: Path, http_server, fashion_dir: Path, kit
) -> None:
    url = _serve_fashion(http_server, fashion_dir)
    wrong = {**_gz_md5s(fashion_dir), STEMS[1]: "0" * 32}
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"checksum mismatch .* expected 0{32}"):
        download_idx(DATASETS["rotfashion"], root, url=url, gz_md5=wrong, progress=False)
    # the file before it was complete and checked (kept for the next try); no partial file
    assert kit.tree(root) == [
        "downloads",
        "downloads/rotfashion",
        f"downloads/rotfashion/{STEMS[0]}.gz",
    ]


def test_the_cli_downloads_and_checks_the_content(
    tmp_path: Path, http_server, fashion_dir: Path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("HNETS_FASHION_DIR", raising=False)
    spec = DATASETS["rotfashion"]
    nowhere = dataclasses.replace(spec.source, system_dirs=())
    monkeypatch.setitem(DATASETS, "rotfashion", dataclasses.replace(spec, source=nowhere))
    url = _serve_fashion(http_server, fashion_dir, broken=STEMS[3])
    root = tmp_path / "data"
    args = ["data", "prepare", "--dataset", "rotfashion", "--url", url, "--no-progress"]
    assert main([*args, "--data-dir", str(root)]) == 2
    err = one_error_line(capsys)
    assert "md5 of the content" in err and STEMS[3] in err
    assert not (root / "rotfashion-rotated").exists()
    url = _serve_fashion(http_server, fashion_dir)
    assert main([*args, "--data-dir", str(root)]) == 0
    assert "Rot-Fashion-MNIST ready in" in capsys.readouterr().out
    offline = ["data", "prepare", "--dataset", "rotfashion", "--url", "http://127.0.0.1:9/"]
    assert main([*offline, "--data-dir", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "--from-idx" in err


# --- bad input ------------------------------------------------------------------------------


def test_wrong_size_idx_files_are_refused(tmp_path: Path, fashion_dir: Path) -> None:
    bad = tmp_path / "idx"
    bad.mkdir()
    for stem in STEMS:
        (bad / f"{stem}.gz").write_bytes((fashion_dir / f"{stem}.gz").read_bytes())
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (10, 32, 32))
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(10 * 32 * 32)))
    with pytest.raises(DataError, match=r"t10k-images.*expected uint8 images of 28x28"):
        prepare_from_idx(bad, tmp_path / "d", dataset="rotfashion", progress=False)
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").iterdir())


def test_mnist_files_are_not_fashion(tmp_path: Path, mnist_dir: Path) -> None:
    with pytest.raises(DataError, match="not the original Fashion-MNIST file"):
        prepare_from_idx(mnist_dir, tmp_path, dataset="rotfashion", progress=False)


def test_a_label_outside_the_classes_is_refused(tmp_path: Path) -> None:
    images = np.zeros((4, 28, 28), np.float32)
    splits = {s: SplitArrays(images, np.array([0, 1, 2, 10])) for s in ("train", "valid", "test")}
    outside = r"label 10 of sample 3 is not in 0-9"
    with (
        staging_dir(tmp_path, "rotfashion-rotated") as staging,
        pytest.raises(DataError, match=outside),
    ):
        write_variant(tmp_path, "rotated", splits, {}, staging=staging, dataset="rotfashion")
    assert list(tmp_path.iterdir()) == []


def test_unknown_names_get_one_line(capsys, tmp_path: Path) -> None:
    for args in (
        ["data", "prepare", "--dataset", "nope"],
        ["data", "stats", "--dataset", "nope"],
        ["train", "--dataset", "nope", "--out", str(tmp_path / "r")],
        ["data", "stats", "--dataset", "rotfashion", "--variant", "standin"],
    ):
        assert main(args) == 2, args
        err = one_error_line(capsys)
        assert "rotmnist, rotfashion, folder:PATH" in err or "rotated, upright" in err
    assert not (tmp_path / "r").exists()


def test_older_manifests_are_rot_mnist(tmp_path: Path, kit) -> None:
    vdir = kit.write_synthetic_variant(tmp_path, "standin", (6, 2, 4))
    manifest_path = vdir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for key in ("dataset", "classes", "image_shape"):
        manifest.pop(key, None)
    manifest_path.write_text(json.dumps(manifest))
    data = RotMNIST(tmp_path, "train")
    assert data.dataset == "rotmnist" and data.classes == tuple("0123456789")
    with pytest.raises(DataError, match="holds dataset 'rotmnist', not 'rotfashion'"):
        load_dataset("rotfashion", "train", root=vdir)


def test_stats_name_the_classes(fashion_root: Path, tmp_path: Path) -> None:
    stats = dataset_stats(fashion_root, dataset="rotfashion", limit=500)
    assert stats["classes"][0] == "T-shirt/top" and len(stats["splits"]["train"]["counts"]) == 10
    assert main(["data", "stats", "--dataset", "rotfashion", "--data-dir", str(fashion_root),
                 "--limit", "64", "--out", str(tmp_path / "s")]) == 0  # fmt: skip
    written = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert "angle_histogram.png" in written and "samples_test.png" in written
