"""No command writes into its inputs: every ``--checkpoint`` command leaves the model alone.

Each command that takes a checkpoint runs on a read-only copy of a shipped model (its
weights and config next to its training records, as a run directory holds them) and
on the registered name (the package data), with every output sent elsewhere; the
files are compared byte for byte before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from hnets.cli import main
from hnets.hub import get_weights

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "docs" / "results" / "pretrained"
EXAMPLE = ROOT / "examples" / "seven_rotated.png"

pytestmark = pytest.mark.usefixtures("one_thread")


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path) -> its sha256; directories too."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


def _read_only_copy(name: str, where: Path) -> Path:
    copy = where / name
    shutil.copytree(get_weights(name).path(), copy)
    shutil.copytree(RECORDS / name, copy, dirs_exist_ok=True)
    for path in [*copy.rglob("*"), copy]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return copy


def _commands(out: Path) -> dict[str, list[str]]:
    """Every command that takes ``--checkpoint``, cheap settings, outputs under ``out``."""
    return {
        "test": ["test", "--limit", "100", "--figure", str(out / "confusion.png"), "--json"],
        "predict": ["predict", str(EXAMPLE), "--json"],
        "export": [
            "export",
            "--check-images",
            "16",
            "--torchscript",
            str(out / "model.pt"),
        ],
        "robustness": ["robustness", "--limit", "40", "--step", "90", "--out", str(out / "r")],
        "equivariance": [
            "equivariance",
            "--images",
            "2",
            "--angles",
            "90",
            "--out",
            str(out / "e"),
        ],
        "tune": ["tune", "--batch-size", "2", "--eval-batch-size", "2", "--json"],
    }


@pytest.mark.slow
def test_no_command_changes_the_checkpoint_it_reads(data_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path / "cache"))  # tune's decisions
    shipped_dir = get_weights("hnet-rotmnist").path()
    shipped = _snapshot(shipped_dir)
    copy = _read_only_copy("hnet-rotmnist", tmp_path / "shipped")
    before = _snapshot(copy)
    assert {"model.safetensors", "config.json", "summary.json", "confusion.png"} <= set(before)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a command's default output would land here, not in the model
    ran = []
    try:
        for i, checkpoint in enumerate((str(copy), "hnet-rotmnist")):
            out = tmp_path / f"out{i}"
            out.mkdir()
            for command, argv in _commands(out).items():
                code = main([argv[0], "--checkpoint", checkpoint, *argv[1:]])
                captured = capsys.readouterr()
                assert code == 0, (command, checkpoint, captured.err)
                ran.append(command)
                if command == "test":
                    assert json.loads(captured.out)["figure"] == str(out / "confusion.png")
    finally:
        for path in [copy, *copy.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert sorted(ran) == sorted(2 * list(_commands(tmp_path)))
    assert _snapshot(copy) == before
    assert _snapshot(shipped_dir) == shipped
    assert sorted(os.listdir(work)) == []
