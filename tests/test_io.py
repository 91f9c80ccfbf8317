"""Atomic writes and safe JSON reading."""

import os

import pytest

from hnets._io import append_line, atomic_write, read_json, write_json
from hnets.errors import HNetsError


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as fh:
        fh.write("half")
        raise RuntimeError("crash in the middle")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_written_files_get_ordinary_permissions(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    mode = os.stat(tmp_path / "a.json").st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_read_json_errors_are_one_line(tmp_path):
    with pytest.raises(HNetsError, match="file not found"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(HNetsError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(HNetsError, match="not a JSON text file"):
        read_json(tmp_path / "bin.json")


def test_read_only_directory_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    with pytest.raises(HNetsError, match="cannot write"):
        write_json(target / "x.json", {})


def test_append_line_rewrites_atomically(tmp_path):
    path = tmp_path / "m.jsonl"
    append_line(path, '{"epoch": 1}')
    append_line(path, '{"epoch": 2}\n')
    assert path.read_text().splitlines() == ['{"epoch": 1}', '{"epoch": 2}']


def test_atomic_write_without_fchmod(monkeypatch, tmp_path):
    """Windows before Python 3.13 has no os.fchmod: the write still goes through."""
    monkeypatch.delattr(os, "fchmod", raising=False)
    path = tmp_path / "a.json"
    write_json(path, {"x": 1})
    append_line(tmp_path / "m.jsonl", '{"epoch": 1}')
    assert read_json(path) == {"x": 1}
    assert (tmp_path / "m.jsonl").read_text() == '{"epoch": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "m.jsonl"]
    if os.name == "posix":
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()
