"""The analysis notebook runs headlessly, top to bottom, on a small slice."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "rotmnist_analysis.ipynb"


def test_notebook_executes(tmp_path: Path, monkeypatch, standin_root: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("HNETS_DATA", str(standin_root))
    monkeypatch.setenv("HNETS_NOTEBOOK_LIMIT", "300")
    monkeypatch.setenv("HNETS_NOTEBOOK_OUT", str(tmp_path / "figs"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text = "\n".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "class balance" in text and "rotate_images(pi/2) vs torch.rot90" in text
    assert "n=300" in text  # the slice was honoured
    figures = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert figures == [
        "angle_histogram.png",
        "class_histogram.png",
        "samples_test.png",
        "samples_train.png",
        "samples_valid.png",
    ]
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 5
