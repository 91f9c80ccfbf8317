"""RotMNIST, data-directory resolution, and the cache's publish / validity rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hnets.data import RotMNIST, ensure_dataset, resolve_data_dir
from hnets.data.cache import (
    SplitArrays,
    is_prepared,
    read_manifest,
    staging_dir,
    verify_variant,
    write_variant,
)
from hnets.errors import DataError


def test_items_and_attributes(tmp_path: Path, kit) -> None:
    kit.write_synthetic_variant(tmp_path, "standin", sizes=(50, 10, 30))
    ds = RotMNIST(tmp_path, "train")
    assert (len(ds), ds.split, ds.variant) == (50, "train", "standin")
    image, label = ds[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label <= 9
    assert ds.images.shape == (50, 1, 28, 28) and ds.labels.dtype == torch.int64
    assert ds.angles is not None and ds.angles.dtype == torch.float32
    expected, labels = kit.synthetic_digits(50, seed=0)
    assert np.array_equal(ds.images[:, 0].numpy(), expected)
    assert ds.labels.tolist() == labels.tolist()
    assert "split='train'" in repr(ds)


def test_train_plus_valid_and_limit(tmp_path: Path, kit) -> None:
    kit.write_synthetic_variant(tmp_path, "standin", sizes=(50, 10, 30))
    both = RotMNIST(tmp_path, "train+valid")
    train, valid = RotMNIST(tmp_path, "train"), RotMNIST(tmp_path, "valid")
    assert len(both) == 60
    assert torch.equal(both.images, torch.cat([train.images, valid.images]))
    assert torch.equal(both.angles, torch.cat([train.angles, valid.angles]))
    assert len(RotMNIST(tmp_path, "train+valid", limit=55)) == 55
    few = RotMNIST(tmp_path, "test", limit=7)
    assert len(few) == 7 and torch.equal(few.images, RotMNIST(tmp_path, "test").images[:7])
    with pytest.raises(DataError, match="unknown split"):
        RotMNIST(tmp_path, "training")


def test_variant_resolution(tmp_path: Path, kit) -> None:
    kit.write_synthetic_variant(tmp_path, "standin")
    assert RotMNIST(tmp_path, "valid").variant == "standin"
    kit.write_synthetic_variant(tmp_path, "original")
    ds = RotMNIST(tmp_path, "valid")
    assert ds.variant == "original" and ds.angles is None
    assert RotMNIST(tmp_path, "valid", variant="standin").variant == "standin"
    with pytest.raises(DataError, match="no Rot-MNIST variant 'upright'.*--upright --from-mnist"):
        RotMNIST(tmp_path, "valid", variant="upright")
    with pytest.raises(DataError, match="unknown Rot-MNIST variant"):
        RotMNIST(tmp_path, "valid", variant="rotated")


def test_root_may_be_the_variant_directory(tmp_path: Path, kit) -> None:
    vdir = kit.write_synthetic_variant(tmp_path, "upright")
    assert ensure_dataset(tmp_path, "upright") == vdir
    assert len(RotMNIST(vdir, "test")) == 30
    with pytest.raises(DataError, match="holds variant 'upright', not 'standin'"):
        RotMNIST(vdir, "test", variant="standin")


def test_data_dir_resolution(monkeypatch, tmp_path: Path) -> None:
    assert resolve_data_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("HNETS_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("HNETS_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(None) == tmp_path / "xdg" / "hnets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_dir(None) == Path("~/.cache/hnets").expanduser()


def test_root_none_uses_hnets_data(monkeypatch, tmp_path: Path, kit) -> None:
    kit.write_synthetic_variant(tmp_path / "env", "standin")
    monkeypatch.setenv("HNETS_DATA", str(tmp_path / "env"))
    assert len(RotMNIST(None, "valid")) == 10


def test_directory_without_valid_manifest_is_not_a_dataset(tmp_path: Path, kit) -> None:
    vdir = kit.write_synthetic_variant(tmp_path, "standin")
    manifest = json.loads((vdir / "manifest.json").read_text())
    (vdir / "manifest.json").write_text("{not json")
    assert not is_prepared(vdir)
    with pytest.raises(DataError, match="no Rot-MNIST data"):
        RotMNIST(tmp_path, "train")
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    (vdir / "valid_labels.npy").unlink()
    with pytest.raises(DataError, match="valid_labels.npy is missing"):
        read_manifest(vdir)
    (vdir / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest.json"):
        read_manifest(vdir)


def test_loading_never_unpickles(tmp_path: Path, kit) -> None:
    vdir = kit.write_synthetic_variant(tmp_path, "standin", sizes=(4, 2, 3))
    np.save(vdir / "train_labels.npy", np.array([{}, {}, {}, {}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"train_labels\.npy: cannot read"):
        RotMNIST(tmp_path, "train")


def test_array_not_matching_manifest(tmp_path: Path, kit) -> None:
    vdir = kit.write_synthetic_variant(tmp_path, "standin", sizes=(4, 2, 3))
    np.save(vdir / "test_images.npy", np.zeros((3, 28, 27), np.float32))
    with pytest.raises(DataError, match=r"manifest says float32 \(3, 28, 28\)"):
        RotMNIST(tmp_path, "test")
    with pytest.raises(DataError, match="checksum mismatch"):
        verify_variant(vdir)


def _splits(value: float) -> dict[str, SplitArrays]:
    images = np.full((2, 28, 28), value, np.float32)
    return {s: SplitArrays(images, np.array([1, 2])) for s in ("train", "valid", "test")}


def test_publish_loser_accepts_an_existing_valid_build(tmp_path: Path) -> None:
    info = {"source": {"kind": "test"}, "seed": 5}
    with staging_dir(tmp_path, "original") as staging:
        winner = write_variant(tmp_path, "original", _splits(0.25), info, staging=staging)
    first = read_manifest(winner)["created_at"]
    with staging_dir(tmp_path, "original") as staging:
        again = write_variant(
            tmp_path, "original", _splits(0.5), info, staging=staging, accept=lambda m: True
        )
    assert again == winner and read_manifest(winner)["created_at"] == first
    assert RotMNIST(tmp_path, "train").images.max().item() == 0.25  # the winner's data
    with staging_dir(tmp_path, "original") as staging, pytest.raises(DataError, match="--force"):
        write_variant(
            tmp_path, "original", _splits(0.5), info, staging=staging, accept=lambda m: False
        )
    with staging_dir(tmp_path, "original") as staging:
        write_variant(tmp_path, "original", _splits(0.5), info, staging=staging, force=True)
    assert RotMNIST(tmp_path, "train").images.max().item() == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rotmnist-original"]


def test_invalid_directory_in_the_way_needs_force(tmp_path: Path) -> None:
    (tmp_path / "rotmnist-original").mkdir()
    (tmp_path / "rotmnist-original" / "junk").write_text("x")
    info = {"source": {"kind": "test"}}
    with (
        staging_dir(tmp_path, "original") as staging,
        pytest.raises(DataError, match="not a valid"),
    ):
        write_variant(tmp_path, "original", _splits(0.1), info, staging=staging)
    with staging_dir(tmp_path, "original") as staging:
        write_variant(tmp_path, "original", _splits(0.1), info, staging=staging, force=True)
    assert is_prepared(tmp_path / "rotmnist-original")
    assert not (tmp_path / "rotmnist-original" / "junk").exists()
