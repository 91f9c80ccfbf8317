"""The shipped pretrained models load by name and reproduce their reported figures.

The weights are package data (``hnets/pretrained/<name>/``, :mod:`hnets.hub`); the
training records (``summary.json``, ``metrics.jsonl``, figures) stay in the repository
under ``docs/results/pretrained/<name>/``.
"""

import json
import os
from pathlib import Path

import pytest
import torch

import hnets
from hnets.cli import main

from .conftest import FASHION_SOURCE as FASHION

RECORDS = Path(__file__).resolve().parents[1] / "docs" / "results" / "pretrained"
NAMES = ["hnet-rotmnist", "cnn-rotmnist", "hnet-rotfashion", "cnn-rotfashion"]


def _dataset_of(name: str) -> str:
    """The run's dataset, as its settings read on resume (older runs predate the field)."""
    from hnets.training import TrainConfig

    summary = json.loads((RECORDS / name / "summary.json").read_text())
    return TrainConfig.from_dict(summary["config"]).dataset


def test_every_shipped_run_is_checked():
    assert sorted(NAMES) == sorted(
        n for n in hnets.list_models() if n.endswith(("-rotmnist", "-rotfashion"))
    )
    assert sorted(p.name for p in RECORDS.iterdir()) == sorted(hnets.list_models())


@pytest.mark.parametrize("name", NAMES)
def test_load_model_works_and_carries_its_recipe(name):
    model = hnets.get_model(name, pretrained=True)
    assert not model.training
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    summary = json.loads((RECORDS / name / "summary.json").read_text())
    # the Rot-MNIST runs are on the stand-in (the real data cannot be downloaded here);
    # Rot-Fashion-MNIST is built from the real Fashion-MNIST by the same protocol
    assert summary["data"]["standin"] is (_dataset_of(name) == "rotmnist")
    assert summary["test_n"] == 50_000
    assert hnets.count_parameters(model) == summary["parameters"] <= 35_000
    assert summary["config"]["train_split"] == "train+valid"


@pytest.mark.parametrize("name", NAMES)
def test_the_shipped_runs_used_the_recipe_that_hnets_train_defaults_to(name):
    """So that ``hnets train --model hnet`` reproduces the shipped H-Net (and the CNN)."""
    from hnets.training import TrainConfig

    summary = json.loads((RECORDS / name / "summary.json").read_text())
    # settings added since (the dataset, folder options) take their defaults, as on resume
    shipped = TrainConfig.from_dict(summary["config"]).to_dict()
    assert shipped["dataset"] == name.split("-")[1]
    defaults = TrainConfig(model=shipped["model"], dataset=shipped["dataset"]).check().to_dict()
    where_and_how = {"device", "data_dir", "data_variant", "num_workers", "eval_batch_size", "test"}
    differing = {
        k: (shipped.get(k), v)
        for k, v in defaults.items()
        if k not in where_and_how and shipped.get(k) != v
    }
    assert differing == {}


def test_pretrained_hnet_is_invariant_to_quarter_turns():
    model = hnets.get_model("hnet-rotmnist", pretrained=True)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(
            model(torch.rot90(x, 1, dims=(-2, -1))), model(x), atol=1e-4, rtol=1e-4
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_hnets_test_reproduces_the_reported_test_accuracy_exactly(
    name, data_env, monkeypatch, capsys
):
    if _dataset_of(name) == "rotfashion":
        # built into the session's data directory from the Fashion-MNIST files on first use
        if not os.environ.get("HNETS_FASHION_DIR") and not FASHION.is_dir():
            pytest.skip(f"Fashion-MNIST files not found at {FASHION}")
        monkeypatch.setenv("HNETS_FASHION_DIR", os.environ.get("HNETS_FASHION_DIR", str(FASHION)))
    summary = json.loads((RECORDS / name / "summary.json").read_text())
    assert (
        main(
            [
                "test",
                "--checkpoint",
                name,
                "--json",
                "--figure",
                str(data_env / f"{name}-confusion.png"),
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 50_000
    assert result["accuracy"] == summary["test_accuracy"]
