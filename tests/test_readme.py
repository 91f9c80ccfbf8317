"""The README as written (its Python blocks run, its API names resolve, its flags exist),
and the command lines of the docs pages."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hnets
from hnets.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)


def test_the_readme_is_a_short_guide_with_the_blocks_this_file_checks() -> None:
    assert len(README.splitlines()) <= 400
    assert len(PYTHON_BLOCKS) >= 6 and len(BASH_BLOCKS) >= 5


def test_every_relative_link_of_the_readme_exists() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if "://" not in t]
    assert "docs/speed.md" in local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def test_the_api_block_runs() -> None:
    namespace: dict[str, object] = {}
    exec(compile(PYTHON_BLOCKS[0], "README.md", "exec"), namespace)  # noqa: S102
    assert tuple(namespace["logits"].shape) == (4, 10)


_OTHER_BLOCKS = [i for i, b in enumerate(PYTHON_BLOCKS) if i > 0 and "onnxruntime" not in b]


@pytest.mark.parametrize("index", _OTHER_BLOCKS)
def test_every_other_python_block_runs(index: int, request: pytest.FixtureRequest) -> None:
    """Each block after the layers' one, in a session where the layers' block ran first.

    The blocks assert what they claim (shapes, agreement of the export, equivariance);
    the training block reads the stand-in (skipped where the MNIST files are absent).
    """
    block = PYTHON_BLOCKS[index]
    if "load_dataset(" in block:
        request.getfixturevalue("data_env")
    namespace: dict[str, object] = {}
    exec(compile(PYTHON_BLOCKS[0], "README.md", "exec"), namespace)  # noqa: S102
    before = set(namespace)
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert set(namespace) - before, "the block defined nothing"
    if "loss" in namespace and "optimizer" in namespace:
        loss = namespace["loss"]
        assert isinstance(loss, torch.Tensor) and torch.isfinite(loss)
        model = namespace["model"]
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


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
    """``hnets.data.load_dataset`` and friends, in a fresh interpreter: nothing imported first."""
    found = set(re.findall(r"\bhnets(?:\.[A-Za-z_]\w*)+", README)) - {"hnets.onnx"}
    names = sorted(n for n in found if "._" not in n)  # the private hnets._native aside
    assert "hnets.data.load_dataset" in names and "hnets.export.export" in names
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


def _command_lines(blocks: list[str]) -> list[list[str]]:
    lines = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            words = line.split()
            if words and words[0].endswith("hnets") and not words[0].endswith(".py"):
                lines.append(words[1:])
    return lines


def _docs_bash_blocks() -> list[str]:
    pages = sorted((ROOT / "docs").glob("*.md"))
    return [b for p in pages for b in re.findall(r"```bash\n(.*?)```", p.read_text(), re.S)]


def test_every_hnets_command_line_names_real_subcommands_and_flags() -> None:
    _check_command_lines(_command_lines(BASH_BLOCKS), at_least=20)


def test_every_hnets_command_line_of_the_docs_pages_names_real_flags() -> None:
    """The report pages under docs/ give commands to reproduce their figures: they must run."""
    _check_command_lines(_command_lines(_docs_bash_blocks()), at_least=15)


def _check_command_lines(lines: list[list[str]], at_least: int) -> None:
    assert len(lines) > at_least
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


def _top_classes(text: str) -> list[tuple[str, float]]:
    return [(c, float(p)) for c, p in re.findall(r"(\S+) ([\d.]+)%", text)]


def test_the_predict_example_prints_what_the_readme_shows() -> None:
    shown = re.search(r"hnets predict --checkpoint (\S+) (\S+)\n# (\S+): (\S+)\s+\((.*)\)", README)
    assert shown, "the README's predict example and its output line"
    checkpoint, image, _, label, top = shown.groups()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "hnets", "predict", "--checkpoint", checkpoint, image],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = re.search(r": (\S+)\s+\((.*)\)", done.stdout)
    assert printed and printed.group(1) == label
    expected, got = _top_classes(top), _top_classes(printed.group(2))
    assert [c for c, _ in got] == [c for c, _ in expected]
    assert all(abs(a - b) <= 0.2 for (_, a), (_, b) in zip(got, expected, strict=True))
