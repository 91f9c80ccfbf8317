"""docs/guide/layers.md as written: every Python block runs, in order, in a fresh namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "guide" / "layers.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE, re.S)


def test_the_guide_has_the_blocks_this_file_checks() -> None:
    assert len(BLOCKS) >= 6
    assert any("export_onnx" in b for b in BLOCKS) and any(
        "check_equivariance" in b for b in BLOCKS
    )


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_python_block_runs(index: int, tmp_path: Path, monkeypatch) -> None:
    block = BLOCKS[index]
    if "onnxruntime" in block:
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    monkeypatch.chdir(tmp_path)  # a block may write files
    exec(compile(block, f"docs/guide/layers.md block {index}", "exec"), {})  # noqa: S102
