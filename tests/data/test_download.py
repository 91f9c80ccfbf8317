"""The real-data path, end to end, against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hnets.data import DEFAULT_URL, RotMNIST, ensure_dataset, prepare_download
from hnets.data.cache import read_manifest, verify_variant
from hnets.errors import DataError


def test_download_amat_archive(tmp_path: Path, http_server, archives, kit) -> None:
    body = archives.amat_zip(prefix="mnist_rotation_new/")
    url = http_server.serve("/mnist_rotation_new.zip", body)
    vdir = prepare_download(tmp_path, url=url, md5=kit.md5_of(body), progress=False)
    assert vdir == tmp_path / "rotmnist-original"
    manifest = verify_variant(vdir)
    assert manifest["sizes"] == {"train": 20, "valid": 4, "test": 10}
    assert manifest["source"]["format"] == "amat" and manifest["source"]["url"] == url
    images, labels = archives.train_valid
    train = RotMNIST(tmp_path, "train")
    assert train.variant == "original" and train.angles is None
    assert train.images.shape == (20, 1, 28, 28) and train.images.dtype.is_floating_point
    assert np.allclose(train.images[:, 0].numpy(), images[:20], atol=1e-6)  # upright again
    assert train.labels.tolist() == labels[:20].tolist()
    valid = RotMNIST(tmp_path, "valid")
    assert valid.labels.tolist() == labels[20:].tolist()  # the last sixth validates
    test = RotMNIST(tmp_path, "test")
    assert np.allclose(test.images[:, 0].numpy(), archives.test[0], atol=1e-6)
    assert not list(tmp_path.glob(".rotmnist-*"))  # no staging directory left


def test_verified_download_is_reused(tmp_path: Path, http_server, archives, kit) -> None:
    body = archives.amat_zip()
    url = http_server.serve("/r.zip", body)
    prepare_download(tmp_path, url=url, md5=kit.md5_of(body), progress=False)
    http_server.serve("/r.zip", b"gone", mode="ok")  # the server now serves junk
    vdir = prepare_download(tmp_path, url=url, md5=kit.md5_of(body), progress=False, force=True)
    assert read_manifest(vdir)["sizes"]["test"] == 10
    assert (tmp_path / "downloads" / "r.zip").read_bytes() == body


def test_npz_repackaging_by_url_and_file(tmp_path: Path, http_server, archives) -> None:
    body = archives.npz_zip()
    url = http_server.serve("/hnets.zip", body)
    vdir = prepare_download(tmp_path / "a", url=url, md5=None, progress=False)
    assert read_manifest(vdir)["source"]["format"] == "npz"
    for split, (images, labels) in archives.npz_splits.items():
        ds = RotMNIST(tmp_path / "a", split)
        assert np.array_equal(ds.images[:, 0].numpy(), images)
        assert ds.labels.tolist() == labels.tolist()
    local = tmp_path / "local.zip"
    local.write_bytes(body)
    vdir = prepare_download(tmp_path / "b", file=local, md5=None, progress=False)
    assert read_manifest(vdir)["source"]["kind"] == "file"
    assert len(RotMNIST(tmp_path / "b", "train+valid")) == 20


def test_wrong_checksum_leaves_nothing(tmp_path: Path, http_server, archives, kit) -> None:
    url = http_server.serve("/mnist_rotation_new.zip", archives.amat_zip())
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"checksum mismatch .* expected 0{32}"):
        prepare_download(root, url=url, md5="0" * 32, progress=False)
    assert kit.tree(root) == []


def test_truncated_transfer_leaves_nothing(tmp_path: Path, http_server, archives, kit) -> None:
    body = archives.amat_zip()
    url = http_server.serve("/mnist_rotation_new.zip", body, mode="truncate")
    root = tmp_path / "data"
    with pytest.raises(DataError, match=rf"truncated: got \d+ of {len(body)} bytes"):
        prepare_download(root, url=url, md5=kit.md5_of(body), progress=False)
    assert kit.tree(root) == []


def test_truncated_without_checksum_is_still_caught(tmp_path: Path, http_server, archives, kit):
    url = http_server.serve("/x.zip", archives.npz_zip(), mode="truncate")
    with pytest.raises(DataError, match="truncated"):
        prepare_download(tmp_path / "data", url=url, md5=None, progress=False)
    assert kit.tree(tmp_path / "data") == []


def test_http_error(tmp_path: Path, http_server) -> None:
    with pytest.raises(DataError, match=r"HTTP 404"):
        prepare_download(tmp_path, url=http_server.url("/missing.zip"), md5=None, progress=False)


def test_existing_data_dir_is_kept_clean(tmp_path: Path, http_server, archives, kit) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "mine.txt").write_text("user file")
    url = http_server.serve("/m.zip", archives.amat_zip())
    with pytest.raises(DataError):
        prepare_download(root, url=url, md5="1" * 32, progress=False)
    assert kit.tree(root) == ["mine.txt"]


@pytest.mark.parametrize(
    ("member", "mode", "problem"),
    [
        ("../../escape.txt", None, "path goes outside"),
        ("/etc/escape.txt", None, "absolute path"),
        ("mnist_rotation_new/link", stat.S_IFLNK | 0o777, "symbolic link"),
    ],
)
def test_hostile_archive_over_http(tmp_path, http_server, archives, kit, member, mode, problem):
    body = _with_extra_member(archives.amat_zip(), member, b"/etc/passwd", mode)
    url = http_server.serve("/evil.zip", body)
    root = tmp_path / "data"
    with pytest.raises(DataError, match=problem):
        prepare_download(root, url=url, md5=kit.md5_of(body), progress=False)
    assert not (root / "rotmnist-original").exists()
    assert kit.tree(root) == ["downloads", "downloads/evil.zip"]  # only the verified archive
    assert not list(tmp_path.rglob("escape.txt"))


def test_zip_bomb_over_http(tmp_path, http_server, archives, kit) -> None:
    body = _with_extra_member(archives.amat_zip(), "padding.bin", b"\0" * (4 << 20), None)
    url = http_server.serve("/bomb.zip", body)
    with pytest.raises(DataError, match="zip bomb"):
        prepare_download(
            tmp_path, url=url, md5=kit.md5_of(body), progress=False, max_unpacked_bytes=2 << 20
        )
    assert not (tmp_path / "rotmnist-original").exists()
    assert not list(tmp_path.glob(".rotmnist-*"))


def test_archive_in_neither_format(tmp_path: Path, kit) -> None:
    path = tmp_path / "other.zip"
    path.write_bytes(kit.zip_bytes({"readme.txt": b"hi"}))
    with pytest.raises(DataError, match="neither the mnist_rotation_new .amat files"):
        prepare_download(tmp_path / "data", file=path, md5=None, progress=False)


def test_bad_amat_inside_archive_names_the_file(tmp_path: Path, kit, archives) -> None:
    bad = kit.zip_bytes({kit.AMAT_TRAIN_VALID: b"1 2 3\n", kit.AMAT_TEST: b"1 2 3\n"})
    path = tmp_path / "bad.zip"
    path.write_bytes(bad)
    with pytest.raises(DataError, match=r"train_valid\.amat: line 1 has 3 values"):
        prepare_download(tmp_path / "data", file=path, md5=None, progress=False)
    assert not list((tmp_path / "data").glob("*rotmnist*"))


def test_file_with_the_default_checksum_is_checked(tmp_path: Path, archives) -> None:
    path = tmp_path / "mnist_rotation_new.zip"
    path.write_bytes(archives.amat_zip())
    with pytest.raises(DataError, match="omit --md5 to skip"):
        prepare_download(tmp_path / "data", file=path, progress=False)


def test_offline_message_says_what_to_do(tmp_path: Path, kit) -> None:
    root = tmp_path / "data"
    url = kit.closed_port_url()
    with pytest.raises(DataError) as info:
        prepare_download(root, url=url, progress=False)
    message = str(info.value)
    for needed in (url, "--from-mnist", "--data-dir", "HNETS_MNIST_DIR", "--file"):
        assert needed in message
    assert "\n" not in message
    assert not root.exists()


def test_ensure_dataset_never_downloads(tmp_path: Path, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("ensure_dataset tried the network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(DataError) as info:
        ensure_dataset(tmp_path)
    for needed in (DEFAULT_URL, "--from-mnist", "--data-dir", "HNETS_MNIST_DIR"):
        assert needed in str(info.value)
    with pytest.raises(DataError, match="variant 'original'.*hnets data prepare"):
        ensure_dataset(tmp_path, "original")
    assert not tmp_path.joinpath("rotmnist-original").exists()


def _with_extra_member(body: bytes, name: str, data: bytes, mode: int | None) -> bytes:
    import io

    buffer = io.BytesIO(body)
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return buffer.getvalue()
