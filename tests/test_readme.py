"""The README as written: its Python blocks run, its API names resolve, its flags exist."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hnets
from hnets.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)


def test_the_readme_has_the_blocks_this_file_checks() -> None:
    assert len(PYTHON_BLOCKS) >= 2 and len(BASH_BLOCKS) >= 5


def test_the_api_block_runs() -> None:
    namespace: dict[str, object] = {}
    exec(compile(PYTHON_BLOCKS[0], "README.md", "exec"), namespace)  # noqa: S102
    assert tuple(namespace["logits"].shape) == (4, 10)


def test_the_onnx_block_runs(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    block = next(b for b in PYTHON_BLOCKS if "onnxruntime" in b)
    model = hnets.get_model("hnet-rotmnist", pretrained=True)
    hnets.export.export_onnx(model, tmp_path / "hnet.onnx")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert tuple(namespace["logits"].shape) == (5, 10)


def test_every_dotted_api_name_resolves_after_a_plain_import() -> None:
    """``hnets.data.RotMNIST`` and friends, in a fresh interpreter: nothing imported first."""
    found = set(re.findall(r"\bhnets(?:\.[A-Za-z_]\w*)+", README)) - {"hnets.onnx"}
    names = sorted(n for n in found if "._" not in n)  # the private hnets._native aside
    assert "hnets.data.RotMNIST" in names and "hnets.export.export" in names
    probe = (
        "import functools, sys, hnets\n"
        "for name in sys.argv[1:]:\n"
        "    functools.reduce(getattr, name.split('.')[1:], hnets)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", probe, *names], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_lines() -> list[list[str]]:
    lines = []
    for block in BASH_BLOCKS:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            words = line.split()
            if words and words[0].endswith("hnets") and not words[0].endswith(".py"):
                lines.append(words[1:])
    return lines


def test_every_hnets_command_line_names_real_subcommands_and_flags() -> None:
    lines = _command_lines()
    assert len(lines) > 20
    for words in lines:
        parser = build_parser()
        path = []
        while words and _subparsers(parser) and words[0] in _subparsers(parser):
            path.append(words[0])
            parser = _subparsers(parser)[words[0]]
            words = words[1:]
        assert path, f"no subcommand in: hnets {' '.join(words)}"
        known = {s for a in parser._actions for s in a.option_strings}
        known |= {f"--no-{s[2:]}" for s in known if s.startswith("--")}
        for word in words:
            for flag in re.findall(r"--[a-z][a-z0-9-]*", word):
                assert flag in known, f"hnets {' '.join(path)}: no flag {flag}"
