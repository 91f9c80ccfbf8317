"""The pretrained registry: names, sha256-checked package data, metadata read from the files."""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hnets
from hnets.checkpoint import save_model
from hnets.cli import build_parser
from hnets.cli.experiment import train_config
from hnets.data.registry import DATASETS
from hnets.errors import CheckpointError
from hnets.evaluation import _image_loader
from hnets.hub import get_weights
from hnets.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "results" / "pretrained"
NAMES = hnets.list_models()
#: settings that say where and how a run ran, not what it learned
WHERE_AND_HOW = {"device", "data_dir", "num_workers", "eval_batch_size", "model_options"}


def _summary(name: str) -> dict:
    return json.loads((RECORDS / name / "summary.json").read_text())


def test_the_registry_is_the_six_shipped_runs_and_nothing_else():
    assert NAMES == [
        "hnet-rotmnist",
        "cnn-rotmnist",
        "hnet-rotfashion",
        "cnn-rotfashion",
        "hnet-upright",
        "cnn-upright",
    ]
    shipped = importlib.resources.files("hnets") / "pretrained"
    folders = [p.name for p in shipped.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert sorted(folders) == sorted(NAMES)
    for name in NAMES:  # weights as safetensors and the config that rebuilds them: no pickle
        files = sorted(p.name for p in (shipped / name).iterdir())
        assert files == ["config.json", "model.safetensors"], name


@pytest.mark.parametrize("name", NAMES)
def test_every_weights_file_has_its_registered_sha256(name):
    weights = get_weights(name)
    data = (weights.files() / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == weights.sha256 == weights.meta["sha256"]
    weights.verify()
    assert weights.path() == Path(str(weights.files()))


def test_damaged_weights_are_refused_before_use(monkeypatch):
    monkeypatch.setitem(hnets.pretrained.SHA256, "hnet-rotmnist", "0" * 64)
    for load in (
        lambda: hnets.get_model("hnet-rotmnist", pretrained=True),
        lambda: hnets.load_model("hnet-rotmnist"),
    ):
        with pytest.raises(CheckpointError, match="sha256 .* differs"):
            load()
    hnets.get_model("hnet-rotmnist")  # the architecture alone needs no weights


@pytest.mark.parametrize("name", NAMES)
def test_the_metadata_figures_are_those_of_the_shipped_records(name):
    meta = get_weights(name).meta
    summary = _summary(name)
    test = meta["metrics"]["test"]
    assert (test["split"], test["n"]) == ("test", summary["test_n"])
    assert test["accuracy"] == summary["test_accuracy"]
    assert test["error"] == pytest.approx(1 - summary["test_accuracy"], abs=1e-12)
    assert meta["num_params"] == summary["parameters"]
    assert meta["epochs"] == summary["best_epoch"]
    assert meta["recipe"] == summary["config"]
    dataset = TrainConfig.from_dict(summary["config"]).dataset
    assert meta["dataset"]["name"] == dataset
    assert meta["dataset"]["variant"] == summary["data"]["variant"]
    assert meta["dataset"]["standin"] is summary["data"]["standin"]
    assert tuple(meta["dataset"]["classes"]) == DATASETS[dataset].classes
    assert meta["license"] == "MIT"
    # the figures hold for the model itself: its size, its input, its blur
    model = hnets.get_model(name, pretrained=True)
    assert hnets.count_parameters(model) == meta["num_params"]
    assert model(torch.rand(2, *meta["input_shape"])).shape == (2, len(meta["dataset"]["classes"]))
    assert model.eval_blur.sigma == meta["preprocessing"]["eval_blur"]
    # the preprocessing named is the one hnets predict applies to this model's inputs
    module, function = meta["preprocessing"]["function"].rsplit(".", 1)
    named = getattr(importlib.import_module(module), function)
    assert _image_loader(model.hnets_checkpoint) is named


@pytest.mark.parametrize("name", NAMES)
def test_the_registered_command_retrains_the_shipped_model(name):
    """``hnets train`` with the registered command line runs the shipped recipe."""
    weights = get_weights(name)
    words = shlex.split(weights.command)
    assert words[:2] == ["hnets", "train"]
    asked = train_config(build_parser().parse_args(words[1:])).check().to_dict()
    shipped = TrainConfig.from_dict(weights.meta["recipe"]).to_dict()
    differing = {
        k: (v, shipped[k]) for k, v in asked.items() if k not in WHERE_AND_HOW and v != shipped[k]
    }
    assert differing == {}
    # the options build the very architecture the weights fit, with the same blur
    built = hnets.build_model(asked["model"], **asked["model_options"])
    model = hnets.get_model(name, pretrained=True)
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert built.eval_blur.sigma == model.eval_blur.sigma


def test_get_model_builds_fresh_or_pretrained_and_takes_options():
    fresh = hnets.get_model("cnn-rotmnist")
    shipped = hnets.get_model("cnn-rotmnist", pretrained=True)
    assert fresh.training and not shipped.training
    assert fresh.hnets_config == {"name": "cnn", "options": {"eval_blur": 0.5, "width": 1.15}}
    assert shipped.hnets_checkpoint["parameters"] == hnets.count_parameters(fresh)
    weight = "classifier.weight"
    assert not torch.equal(fresh.state_dict()[weight], shipped.state_dict()[weight])
    sharp = hnets.get_model("cnn-rotmnist", pretrained=True, eval_blur=0.0)
    assert sharp.eval_blur.sigma == 0.0 and not sharp.training
    assert torch.equal(sharp.state_dict()[weight], shipped.state_dict()[weight])
    with pytest.raises(CheckpointError, match="do not fit options"):
        hnets.get_model("cnn-rotmnist", pretrained=True, width=1.0)
    with pytest.raises(CheckpointError, match="no such pretrained model; hnets ships hnet-"):
        hnets.get_model("resnet50")


def test_a_name_works_wherever_a_checkpoint_does_and_a_path_wins(tmp_path, monkeypatch):
    by_name = hnets.load_model("hnet-upright")
    assert by_name.hnets_checkpoint == get_weights("hnet-upright").config
    monkeypatch.chdir(tmp_path)
    save_model(hnets.build_model("cnn", width=0.5), tmp_path / "hnet-upright")
    assert hnets.load_model("hnet-upright").hnets_config["name"] == "cnn"
    with pytest.raises(CheckpointError, match="nor a pretrained model .hnet-rotmnist, "):
        hnets.load_model("hnet-sideways")


def test_torch_hub_loads_every_registered_model_from_the_checkout():
    spec = importlib.util.spec_from_file_location("hnets_hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {n for n in vars(hubconf) if not n.startswith("_") and callable(vars(hubconf)[n])}
    assert entries - {"get_model", "Path"} == {n.replace("-", "_") for n in NAMES}
    assert set(hubconf.dependencies) <= {"torch", "numpy", "safetensors"}
    x = torch.rand(3, 1, 28, 28)
    model = torch.hub.load(str(ROOT), "hnet_rotmnist", source="local", pretrained=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hnets.get_model("hnet-rotmnist", pretrained=True)(x))
    fresh = torch.hub.load(str(ROOT), "cnn_upright", source="local", width=0.5)
    assert fresh.training and fresh.hnets_config["options"] == {"width": 0.5}


def test_torch_hub_uses_the_checkouts_own_code(tmp_path):
    """A fresh interpreter that has not imported hnets gets the checkout's ``src/hnets``."""
    probe = (
        "import sys, torch\n"
        f"model = torch.hub.load({str(ROOT)!r}, 'cnn_rotfashion', source='local',"
        " pretrained=True)\n"
        "print(sys.modules['hnets'].__file__, type(model).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HNETS_CACHE_DIR": str(tmp_path / "cache")},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    where, kind = done.stdout.split()
    assert Path(where) == ROOT / "src" / "hnets" / "__init__.py" and kind == "RegularCNN"


def test_import_hnets_costs_torch_numpy_and_safetensors_only():
    """Neither plotting, image decoding, progress bars nor the CLI come with the layers."""
    probe = (
        "import sys, numpy, torch, safetensors.torch\n"
        "before = set(sys.modules)\n"
        "import hnets\n"
        "hnets.get_model('hnet-rotmnist', pretrained=True)(torch.rand(1, 1, 28, 28))\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    added = set(done.stdout.split())
    assert "hnets.hub" in added  # the probe sees what import hnets brings
    heavy = {"matplotlib", "PIL", "tqdm", "hnets.cli", "hnets.training", "hnets.data"}
    assert {m.split(".")[0] for m in added} & heavy == set()
    assert added & heavy == set()


def _metadata_table() -> str:
    """The table docs/guide/pretrained.md shows, from the registry's metadata."""
    lines = [
        "| name | model | parameters | test error | test images | dataset (variant) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name in NAMES:
        meta = get_weights(name).meta
        test, data = meta["metrics"]["test"], meta["dataset"]
        standin = ", stand-in" if data["standin"] else ""
        lines.append(
            f"| `{name}` | {meta['model']} | {meta['num_params']:,} | {test['error']:.2%} "
            f"| {test['n']:,} | {data['title']} ({data['variant']}{standin}) |"
        )
    return "\n".join(lines)


def test_the_guide_shows_the_registry_metadata():
    page = (ROOT / "docs" / "guide" / "pretrained.md").read_text()
    table = _metadata_table()
    assert table in page, f"docs/guide/pretrained.md should hold this table:\n{table}"
