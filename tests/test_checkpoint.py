"""Model checkpoints (safetensors + config.json) and training checkpoints (weights-only)."""

from __future__ import annotations

import errno
import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import hnets
from hnets import build_model, load_model, save_model
from hnets.checkpoint import (
    MODEL_FORMAT,
    load_training_state,
    read_model_config,
    rng_state,
    save_training_state,
    set_rng_state,
    unwrap_model,
    update_model_extra,
)
from hnets.errors import CheckpointError, HNetsError

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_a_little(name: str, **options) -> nn.Module:
    """A model whose parameters and BN statistics differ from a fresh one."""
    torch.manual_seed(1)
    model = build_model(name, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        loss = model(torch.rand(8, 1, 28, 28)).logsumexp(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize(("name", "options"), [("hnet", {"width": 0.5}), ("cnn", {"width": 0.5})])
def test_round_trip_gives_identical_outputs(tmp_path, name, options):
    model = _trained_a_little(name, **options)
    save_model(model, tmp_path / "ckpt", extra={"test_accuracy": 0.5, "data_variant": "standin"})
    loaded = load_model(tmp_path / "ckpt")
    assert not loaded.training
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert loaded.hnets_config == {"name": name, "options": options}


def test_config_json_describes_the_model(tmp_path):
    model = build_model("hnet", width=0.5, max_order=2)
    save_model(model, tmp_path, extra={"test_accuracy": 0.9})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["format"] == MODEL_FORMAT == "hnets-model/1"
    assert config["model"] == "hnet" and config["options"] == {"width": 0.5, "max_order": 2}
    assert config["parameters"] == hnets.count_parameters(model)
    assert config["hnets_version"] == hnets.__version__
    assert config["torch_version"] == str(torch.__version__)
    assert config["extra"] == {"test_accuracy": 0.9}
    update_model_extra(tmp_path, {"test_error": 0.1})
    assert read_model_config(tmp_path)["extra"] == {"test_accuracy": 0.9, "test_error": 0.1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_load_accepts_the_weights_file_and_a_device(tmp_path):
    save_model(build_model("cnn", width=0.5), tmp_path)
    model = load_model(tmp_path / "model.safetensors", map_location="cpu")
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="disagree"):
        load_model(tmp_path, "cpu", map_location="meta")


def test_wrappers_are_unwrapped_when_saving(tmp_path):
    model = build_model("cnn", width=0.5)
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    save_model(wrapped, tmp_path)
    assert all(not k.startswith("module.") for k in load_model(tmp_path).state_dict())


def test_a_model_without_hnets_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="build_model"):
        save_model(nn.Linear(2, 2), tmp_path)
    assert not tmp_path.joinpath("model.safetensors").exists()


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_model(tmp_path / "nowhere")
    save_model(build_model("cnn", width=0.5), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: file not found") as info:
        load_model(tmp_path)
    _one_line(info.value)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_file(tmp_path, damage):
    save_model(build_model("cnn", width=0.5), tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_model(tmp_path)
    assert str(path) in _one_line(info.value)


def test_weights_of_another_model_are_named(tmp_path):
    save_model(build_model("hnet", width=0.5), tmp_path / "hnet")
    save_model(build_model("cnn"), tmp_path / "cnn")
    # config of a cnn, weights of an hnet
    (tmp_path / "cnn" / "model.safetensors").write_bytes(
        (tmp_path / "hnet" / "model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointError, match="do not belong to model 'cnn'") as info:
        load_model(tmp_path / "cnn")
    assert "missing" in _one_line(info.value) and "unexpected" in str(info.value)
    # same architecture, another width: the shapes differ
    save_model(build_model("hnet", width=1.0), tmp_path / "wide")
    (tmp_path / "wide" / "model.safetensors").write_bytes(
        (tmp_path / "hnet" / "model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointError, match="in the file") as info:
        load_model(tmp_path / "wide")
    _one_line(info.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "unknown format"),
        ('{"format": "hnets-model/99", "model": "hnet"}', "unknown format"),
        ('{"format": "hnets-model/1", "model": "resnet"}', "unknown model 'resnet'"),
        ('{"format": "hnets-model/1", "model": "hnet", "options": {"colour": 1}}', "bad options"),
    ],
)
def test_bad_config_json(tmp_path, config, message):
    save_model(build_model("hnet", width=0.5), tmp_path)
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(tmp_path)
    _one_line(info.value)


def test_malicious_files_are_never_unpickled(tmp_path, malicious_pickles):
    marker, payloads = malicious_pickles
    for kind, payload in payloads.items():
        ckpt = tmp_path / kind
        save_model(build_model("cnn", width=0.5), ckpt)
        (ckpt / "model.safetensors").write_bytes(payload)
        with pytest.raises(CheckpointError):
            load_model(ckpt)
        (ckpt / "config.json").write_bytes(payload)
        with pytest.raises(CheckpointError):
            load_model(ckpt)
        (ckpt / "checkpoint.pt").write_bytes(payload)
        with pytest.raises(CheckpointError, match="checkpoint.pt") as info:
            load_training_state(ckpt / "checkpoint.pt")
        _one_line(info.value)
    assert not marker.exists()


def test_training_state_round_trip(tmp_path):
    model = build_model("cnn", width=0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "history": [{"epoch": 1, "valid_acc": None, "train_loss": 2.3}],
        "rng": rng_state(),
    }
    save_training_state(tmp_path / "checkpoint.pt", state)
    loaded = load_training_state(tmp_path / "checkpoint.pt")
    assert loaded["format"] == "hnets-train/1" and loaded["epoch"] == 3
    assert loaded["history"] == state["history"]
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    assert torch.equal(
        fresh.state_dict()["state"][0]["exp_avg"],
        optimizer.state[next(model.parameters())]["exp_avg"],
    )


def test_only_plain_data_goes_into_a_training_checkpoint(tmp_path):
    for bad in (np.zeros(3), {"v": torch.__version__}, {("tuple", "key"): 1}, {"f": print}):
        with pytest.raises(TypeError):
            save_training_state(tmp_path / "checkpoint.pt", {"x": bad})
    assert not (tmp_path / "checkpoint.pt").exists()


def test_rng_states_restore_every_generator():
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    saved = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_truncated_or_foreign_training_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_training_state(path, {"epoch": 1, "model": {"w": torch.zeros(1000)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="not a readable") as info:
        load_training_state(path)
    _one_line(info.value)
    torch.save({"epoch": 1}, path)  # readable, but not ours
    with pytest.raises(CheckpointError, match="unknown format"):
        load_training_state(path)
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        load_training_state(tmp_path / "absent.pt")


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_training_state(path, {"epoch": 1})
    before = path.read_bytes()

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(HNetsError, match="No space left on device") as info:
        save_training_state(path, {"epoch": 2})
    monkeypatch.undo()
    _one_line(info.value)
    assert path.read_bytes() == before
    assert load_training_state(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left
