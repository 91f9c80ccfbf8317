"""The analysis notebook runs headlessly, top to bottom, on a small slice."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "rotmnist_analysis.ipynb"


FASHION = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fashion-mnist"


@pytest.mark.parametrize("dataset", ["rotmnist", "rotfashion"])
def test_notebook_executes(tmp_path: Path, monkeypatch, standin_root: Path, dataset: str) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("HNETS_DATA", str(standin_root))
    monkeypatch.setenv("HNETS_NOTEBOOK_DATASET", dataset)
    if dataset == "rotfashion":  # built by the notebook's ensure_dataset, from the local files
        if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
            pytest.skip("Fashion-MNIST files not found")
        monkeypatch.setenv("HNETS_DATA", str(tmp_path / "data"))
        monkeypatch.setenv("HNETS_FASHION_DIR", str(FASHION.resolve()))
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
    assert ("Ankle boot" in text) == (dataset == "rotfashion")
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
