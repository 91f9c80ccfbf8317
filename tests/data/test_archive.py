"""Safe extraction: hostile archives are refused before anything is written."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from hnets.data import safe_extract
from hnets.errors import DataError


def hostile_zip(path: Path, name: str, data: bytes = b"pwned", *, mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("good.txt", b"fine")
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


def test_good_archive_extracts(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("dir/", b"")
        zf.writestr("dir/inner.txt", b"hello")
        zf.writestr("top.txt", b"x" * 100)
    files = safe_extract(archive, tmp_path / "out", max_bytes=1000)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == [
        "dir/inner.txt",
        "top.txt",
    ]
    assert (tmp_path / "out" / "dir" / "inner.txt").read_bytes() == b"hello"


@pytest.mark.parametrize(
    ("name", "mode", "problem"),
    [
        ("../escaped.txt", None, r"refusing member '\.\./escaped\.txt': path goes outside"),
        ("sub/../../escaped.txt", None, "path goes outside"),
        ("/tmp/absolute-escape.txt", None, "absolute path"),
        ("C:/windows/escape.txt", None, "absolute path"),
        ("link", stat.S_IFLNK | 0o777, "symbolic link"),
        ("fifo", stat.S_IFIFO | 0o644, "special file"),
    ],
)
def test_hostile_members_are_refused(tmp_path: Path, name: str, mode: int | None, problem: str):
    work = tmp_path / "work"
    work.mkdir()
    archive = hostile_zip(tmp_path / "evil.zip", name, b"../../outside", mode=mode)
    dest = work / "out"
    with pytest.raises(DataError, match=problem) as info:
        safe_extract(archive, dest, max_bytes=10_000)
    assert str(info.value).startswith(str(archive))
    assert not dest.exists()  # refused before writing anything
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.zip", "work"]


def test_zip_bomb_beyond_the_cap(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (8 << 20))
    assert archive.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"unpacks to 8388608 bytes, more than the limit"):
        safe_extract(archive, tmp_path / "out", max_bytes=1 << 20)
    assert not (tmp_path / "out").exists()


def test_member_that_lies_about_its_size(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("data.bin", b"A" * 5000)
    raw = bytearray(buffer.getvalue())
    # Rewrite the declared uncompressed size (local header and central directory) to 10.
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.index(sig)
        raw[at + offset : at + offset + 4] = (10).to_bytes(4, "little")
    archive = tmp_path / "liar.zip"
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="liar.zip"):
        safe_extract(archive, tmp_path / "out", max_bytes=100)
    written = list((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else []
    assert sum(p.stat().st_size for p in written if p.is_file()) <= 10


def test_not_a_zip(tmp_path: Path) -> None:
    archive = tmp_path / "plain.zip"
    archive.write_bytes(b"this is not a zip")
    with pytest.raises(DataError, match="not a valid zip archive"):
        safe_extract(archive, tmp_path / "out")


def test_duplicate_members(tmp_path: Path) -> None:
    archive = tmp_path / "dup.zip"
    with zipfile.ZipFile(archive, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("a.txt", b"1")
        zf.writestr("./a.txt", b"2")
        zf.writestr("a.txt", b"3")
    with pytest.raises(DataError, match="appears twice"):
        safe_extract(archive, tmp_path / "out")
