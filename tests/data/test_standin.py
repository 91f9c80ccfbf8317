"""The offline stand-in built from the MNIST idx files (skipped without them)."""

from __future__ import annotations

import gzip
import hashlib
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from hnets.data import RotMNIST, load_mnist, prepare_from_mnist
from hnets.data.cache import read_manifest, verify_variant
from hnets.data.idx import MNIST_FILES
from hnets.data.protocol import STANDIN_SIZES, standin_indices
from hnets.errors import DataError


def test_full_build_protocol_and_sizes(standin_root: Path) -> None:
    build_seconds = float((standin_root / "build_seconds.txt").read_text())
    assert build_seconds < 60, f"stand-in build took {build_seconds:.1f} s"
    vdir = standin_root / "rotmnist-standin"
    manifest = verify_variant(vdir)
    assert manifest["sizes"] == STANDIN_SIZES and manifest["seed"] == 0
    assert manifest["source"]["kind"] == "mnist"
    for split, n in STANDIN_SIZES.items():
        ds = RotMNIST(standin_root, split)
        assert ds.variant == "standin" and len(ds) == n
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype.is_floating_point
        assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
        assert ds.angles is not None and ds.angles.shape == (n,)
        assert ds.angles.min() >= 0.0 and ds.angles.max() < 2 * math.pi
        assert ds.labels.unique().tolist() == list(range(10))
    # Angles uniform in [0, 2 pi): each quadrant holds about a quarter of the test split.
    quadrants = np.bincount(
        (RotMNIST(standin_root, "test").angles.numpy() // (math.pi / 2)).astype(int)
    )
    assert quadrants.shape == (4,) and (np.abs(quadrants / 50_000 - 0.25) < 0.01).all()


def test_split_indices_are_disjoint_and_from_the_training_file() -> None:
    idx = standin_indices(np.random.default_rng(0), 60_000)
    sizes = {k: len(v) for k, v in idx.items()}
    assert sizes == {"train": 10_000, "valid": 2_000, "extra_test": 40_000}
    together = np.concatenate(list(idx.values()))
    assert len(np.unique(together)) == 52_000 and together.min() >= 0 and together.max() < 60_000
    other = standin_indices(np.random.default_rng(1), 60_000)
    assert not np.array_equal(idx["train"], other["train"])
    with pytest.raises(DataError, match="needs 52000"):
        standin_indices(np.random.default_rng(0), 50_000)


def test_upright_variant_shares_digits_and_test_split(standin_root: Path, mnist_dir: Path, kit):
    vdir = prepare_from_mnist(mnist_dir, standin_root, upright=True, progress=False)
    assert vdir.name == "rotmnist-upright"
    upright, standin = kit.digests(vdir), kit.digests(standin_root / "rotmnist-standin")
    for field in ("images", "labels", "angles"):
        assert upright[f"test/{field}"] == standin[f"test/{field}"]
    assert upright["train/images"] != standin["train/images"]
    assert upright["train/labels"] == standin["train/labels"]
    mnist = load_mnist(mnist_dir)
    idx = standin_indices(np.random.default_rng(0), 60_000)
    train = RotMNIST(standin_root, "train", variant="upright")
    assert (train.angles == 0).all()
    expected = mnist.train_images[idx["train"]].astype(np.float32) / 255
    assert np.array_equal(train.images[:, 0].numpy(), expected)
    valid = RotMNIST(standin_root, "valid", variant="upright")
    assert valid.labels.tolist() == mnist.train_labels[idx["valid"]].tolist()
    # The stand-in's train digits are the same digits, rotated by the stored angles.
    rotated = RotMNIST(standin_root, "train", variant="standin", limit=50)
    assert torch_rotated_equal(expected[:50], rotated.angles.numpy(), rotated.images[:, 0].numpy())


def torch_rotated_equal(upright: np.ndarray, angles: np.ndarray, rotated: np.ndarray) -> bool:
    import torch

    from hnets.data import rotate_images

    again = rotate_images(torch.from_numpy(upright), torch.from_numpy(angles)).clamp(0, 1)
    return bool(np.allclose(again.numpy(), rotated, atol=1e-6))


def test_cache_load_is_fast(standin_root: Path) -> None:
    RotMNIST(standin_root, "test", limit=1)  # warm the file system cache
    start = time.perf_counter()
    test = RotMNIST(standin_root, "test")
    elapsed = time.perf_counter() - start
    assert len(test) == 50_000
    assert elapsed < 1.0, f"loading the test split took {elapsed:.2f} s"


def test_existing_build_is_reused_and_seed_change_needs_force(standin_root: Path, mnist_dir):
    vdir = standin_root / "rotmnist-standin"
    created = read_manifest(vdir)["created_at"]
    assert prepare_from_mnist(mnist_dir, standin_root, progress=False) == vdir
    assert read_manifest(vdir)["created_at"] == created
    with pytest.raises(DataError, match="built with seed 0; use --force"):
        prepare_from_mnist(mnist_dir, standin_root, seed=1, progress=False)


def test_raw_idx_files_give_the_same_digits(tmp_path: Path, mnist_dir: Path) -> None:
    for stem in MNIST_FILES:
        (tmp_path / stem).write_bytes(gzip.decompress((mnist_dir / f"{stem}.gz").read_bytes()))
    raw, packed = load_mnist(tmp_path), load_mnist(mnist_dir)
    assert np.array_equal(raw.test_images, packed.test_images)
    assert np.array_equal(raw.train_labels, packed.train_labels)
    assert raw.train_images.shape == (60_000, 28, 28) and raw.test_labels.shape == (10_000,)


def test_modified_mnist_file_fails_the_md5(tmp_path: Path, mnist_dir: Path) -> None:
    for stem in MNIST_FILES:
        shutil.copy(mnist_dir / f"{stem}.gz", tmp_path / f"{stem}.gz")
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[8] = (data[8] + 1) % 10  # a different but valid label
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte\.gz: md5 .*not the original MNIST"
    ):
        load_mnist(tmp_path)
    assert hashlib.md5(bytes(data)).hexdigest() != MNIST_FILES["t10k-labels-idx1-ubyte"]
    with pytest.raises(DataError, match="idx1-ubyte"):
        prepare_from_mnist(tmp_path, tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()


def test_missing_and_truncated_mnist_files(tmp_path: Path, mnist_dir: Path) -> None:
    with pytest.raises(DataError, match="train-images-idx3-ubyte .*not found"):
        load_mnist(tmp_path)
    for stem in MNIST_FILES:
        shutil.copy(mnist_dir / f"{stem}.gz", tmp_path / f"{stem}.gz")
    raw = gzip.decompress((mnist_dir / "train-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(raw[:-100])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: truncated"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="MNIST directory not found"):
        load_mnist(tmp_path / "nope")
