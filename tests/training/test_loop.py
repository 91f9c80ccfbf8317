"""The training loop, in process, on small slices of the stand-in."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import hnets.training.data
import hnets.training.loop
from hnets import load_model
from hnets.checkpoint import load_training_state, read_model_config
from hnets.errors import HNetsError
from hnets.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMING_KEYS = {"seconds", "train_seconds", "images_per_s"}


def tiny(**changes) -> TrainConfig:
    """An hnet small enough for a training run to take about a second."""
    base = TrainConfig(
        model="hnet",
        model_options={"width": 0.5},
        epochs=1,
        batch_size=32,
        limit_train=64,
        limit_eval=100,
        device="cpu",
        train_split="train",
    )
    return dataclasses.replace(base, **changes)


def metrics(out_dir) -> list[dict]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def weights(out_dir) -> dict[str, torch.Tensor]:
    return load_file(out_dir / "model.safetensors")


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_a_run_writes_everything(tmp_path, data_env):
    out = tmp_path / "run"
    summary = train(tiny(epochs=2), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "curves.png",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
    ]
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["test_n"] == 100 and summary["test"]["n"] == 100
    assert summary["test_error"] == pytest.approx(1 - summary["test_accuracy"])
    assert summary["data"]["variant"] == "standin" and summary["data"]["standin"] is True
    assert summary["data"]["train_n"] == 64 and summary["parameters"] > 0
    assert summary["config"]["model_options"] == {"width": 0.5, "eval_blur": 0.5}
    assert summary["seed"] == 0
    assert summary["device"] == "cpu" and summary["versions"]["torch"]
    assert 1 <= summary["best_epoch"] <= 2 and summary["epochs"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert {
            "epoch",
            "lr",
            "train_loss",
            "train_acc",
            "valid_loss",
            "valid_acc",
            "seconds",
            "images_per_s",
        } <= set(row)
        assert row["train_n"] == 64 and 0 <= row["valid_acc"] <= 1
    best = rows[summary["best_epoch"] - 1]
    assert summary["valid_accuracy"] == best["valid_acc"]
    extra = read_model_config(out)["extra"]
    assert extra["test_accuracy"] == summary["test_accuracy"] and extra["data_variant"] == "standin"
    assert extra["epoch"] == summary["best_epoch"]
    assert (out / "curves.png").read_bytes().startswith(PNG_MAGIC)
    state = load_training_state(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["step_in_epoch"] == 0
    assert {"model", "optimizer", "scheduler", "rng", "best", "config", "history"} <= set(state)
    # the saved model is the best epoch's, and it reproduces the test accuracy
    model = load_model(out)
    from hnets.data import RotMNIST

    test = RotMNIST(data_env, "test", variant="standin", limit=100)
    with torch.no_grad():
        accuracy = (model(test.images).argmax(1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(summary["test_accuracy"])


@pytest.mark.slow
def test_same_seed_same_result_other_seed_other_result(tmp_path, data_env):
    first = train(tiny(), tmp_path / "a", progress=False)
    second = train(tiny(), tmp_path / "b", progress=False)
    other = train(tiny(seed=1), tmp_path / "c", progress=False)
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert first["test"] == second["test"]
    assert same_weights(tmp_path / "a", tmp_path / "b")
    assert not same_weights(tmp_path / "a", tmp_path / "c")
    assert metrics(tmp_path / "a") != metrics(tmp_path / "c") or other["test"] != first["test"]


@pytest.mark.slow
def test_loader_workers_see_the_same_data_stream(tmp_path, data_env):
    train(tiny(model="cnn"), tmp_path / "a", progress=False)
    train(tiny(model="cnn", num_workers=1), tmp_path / "b", progress=False)
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")


@pytest.mark.slow
def test_an_existing_run_is_never_overwritten_by_accident(tmp_path, data_env):
    out = tmp_path / "run"
    train(tiny(), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(HNetsError, match="already holds a run") as info:
        train(tiny(seed=3), out, progress=False)
    assert "\n" not in str(info.value) and "--resume" in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a directory with unrelated files is fine to train into
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("mine")
    train(tiny(), tmp_path / "notes", progress=False)
    assert (tmp_path / "notes" / "README.txt").read_text() == "mine"
    # --overwrite starts afresh
    train(tiny(seed=3), out, overwrite=True, progress=False)
    assert json.loads((out / "summary.json").read_text())["seed"] == 3
    assert len(metrics(out)) == 1


@pytest.mark.slow
def test_resume_extends_a_finished_run_and_refuses_other_settings(tmp_path, data_env):
    out = tmp_path / "run"
    train(tiny(), out, progress=False)
    with pytest.raises(HNetsError, match=r"settings differ \(lr 0.005 -> 0.1\)"):
        train(tiny(lr=0.1, epochs=2), out, resume=True, progress=False)
    summary = train(tiny(epochs=2), out, resume=True, progress=False)
    assert [r["epoch"] for r in metrics(out)] == [1, 2] and summary["epochs"] == 2
    with pytest.raises(HNetsError, match="epochs 2 -> 1"):
        train(tiny(epochs=1), out, resume=True, progress=False)
    straight = tmp_path / "straight"
    train(tiny(epochs=2), straight, progress=False)
    # extending 1 -> 2 epochs changes the schedule of epoch 2, so only epoch 1 must agree
    assert metrics(out)[0] == metrics(straight)[0]


@pytest.mark.slow
def test_eval_blur_changes_nothing_in_training_and_may_change_on_resume(tmp_path, data_env):
    """Same weights and training metrics with or without it; validation reads it."""
    runs = {}
    for sigma in (0.0, 0.5):
        runs[sigma] = tmp_path / f"blur{sigma}"
        train(tiny(model_options={"width": 0.5, "eval_blur": sigma}), runs[sigma], progress=False)
    assert same_weights(runs[0.0], runs[0.5])
    rows = {sigma: metrics(out)[0] for sigma, out in runs.items()}
    assert rows[0.0]["train_loss"] == rows[0.5]["train_loss"]
    assert rows[0.0]["valid_loss"] != rows[0.5]["valid_loss"]
    assert read_model_config(runs[0.5])["options"]["eval_blur"] == 0.5
    # an evaluation-only option may change on resume; a training one may not
    changed = tiny(model_options={"width": 0.5, "eval_blur": 0.3}, epochs=2)
    train(changed, runs[0.0], resume=True, progress=False)
    assert read_model_config(runs[0.0])["options"]["eval_blur"] == 0.3
    with pytest.raises(HNetsError, match="settings differ .*model_options"):
        train(tiny(model_options={"width": 0.6, "eval_blur": 0.3}, epochs=3), runs[0.0],
              resume=True, progress=False)  # fmt: skip


@pytest.mark.slow
def test_train_plus_valid_keeps_the_last_epoch(tmp_path, data_env):
    summary = train(
        tiny(train_split="train+valid", epochs=2, model="cnn"), tmp_path / "r", progress=False
    )
    assert summary["best_epoch"] == 2 and summary["valid_accuracy"] is None
    assert all(row["valid_acc"] is None for row in metrics(tmp_path / "r"))
    assert (tmp_path / "r" / "curves.png").is_file()


@pytest.mark.slow
def test_valid_every_skips_validation_only_and_keeps_the_best_validated_epoch(tmp_path, data_env):
    every = train(tiny(epochs=5, model="cnn"), tmp_path / "every", progress=False)
    sparse = train(tiny(epochs=5, model="cnn", valid_every=2), tmp_path / "sparse", progress=False)
    rows, sparse_rows = metrics(tmp_path / "every"), metrics(tmp_path / "sparse")
    validated = [row["epoch"] for row in sparse_rows if row["valid_acc"] is not None]
    assert validated == [2, 4, 5]  # every second epoch, and the last
    for a, b in zip(rows, sparse_rows, strict=True):  # training itself is unchanged
        assert (a["train_loss"], a["train_acc"]) == (b["train_loss"], b["train_acc"])
        if b["valid_acc"] is not None:
            assert (a["valid_loss"], a["valid_acc"]) == (b["valid_loss"], b["valid_acc"])
    best = max(
        (row for row in rows if row["epoch"] in validated),
        key=lambda row: (row["valid_acc"], -row["valid_loss"]),
    )
    assert sparse["best_epoch"] == best["epoch"] and sparse["valid_accuracy"] == best["valid_acc"]
    assert every["best_epoch"] in {r["epoch"] for r in rows}
    assert (tmp_path / "sparse" / "curves.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, data_env, monkeypatch
):
    real = hnets.training.loop.lr_at

    def explode_in_epoch_two(config, step, steps_per_epoch):
        return 1e30 if step >= steps_per_epoch else real(config, step, steps_per_epoch)

    # the loop looks the schedule up in its own module
    monkeypatch.setattr(hnets.training.loop, "lr_at", explode_in_epoch_two)
    out = tmp_path / "run"
    with pytest.raises(HNetsError, match=r"NaN or infinite at epoch 2, step \d") as info:
        train(tiny(epochs=3, optimizer="sgd"), out, progress=False)
    assert "\n" not in str(info.value) and "epoch 1" in str(info.value)
    assert load_training_state(out / "checkpoint.pt")["epoch"] == 1
    assert len(metrics(out)) == 1 and not (out / "summary.json").exists()
    assert all(torch.isfinite(w).all() for w in weights(out).values())


@pytest.mark.slow
def test_a_checkpoint_whose_contents_do_not_fit_is_refused(tmp_path, data_env):
    from hnets import build_model
    from hnets.checkpoint import save_training_state

    out = tmp_path / "run"
    train(tiny(model="cnn"), out, progress=False)
    good = load_training_state(out / "checkpoint.pt")
    save_training_state(
        out / "checkpoint.pt", {**good, "model": build_model("hnet", width=0.5).state_dict()}
    )
    with pytest.raises(HNetsError, match="checkpoint.pt does not fit this run") as info:
        train(tiny(model="cnn", epochs=2), out, resume=True, progress=False)
    assert "\n" not in str(info.value)
    save_training_state(out / "checkpoint.pt", {k: v for k, v in good.items() if k != "history"})
    with pytest.raises(HNetsError, match="does not fit"):
        train(tiny(model="cnn", epochs=2), out, resume=True, progress=False)


def test_a_sweep_run_with_test_off_never_opens_the_test_split(tmp_path, data_env, monkeypatch):
    opened = []
    real = hnets.training.data.ImageDataset

    def spy(root, split, **kwargs):
        opened.append(split)
        return real(root, split, **kwargs)

    # every split a run reads is opened in hnets.training.data (the test split too)
    monkeypatch.setattr(hnets.training.data, "ImageDataset", spy)
    summary = train(tiny(test=False), tmp_path / "r", progress=False)
    assert opened == ["train", "valid"]
    assert summary["test_accuracy"] is None and summary["test_n"] is None
    assert summary["valid_accuracy"] is not None
    assert "test_accuracy" not in read_model_config(tmp_path / "r").get("extra", {})
    # switching it back on when resuming is allowed: it changes no computation
    summary = train(tiny(test=True, epochs=2), tmp_path / "r", resume=True, progress=False)
    assert opened[-1] == "test" and summary["test_n"] == 100
    # rerunning a finished run's command reads no data at all and rewrites nothing
    files = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    opened.clear()
    again = train(tiny(test=True, epochs=2), tmp_path / "r", resume=True, progress=False)
    assert again == summary and opened == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == files
    # with test figures missing, a finished run is scored once when they are asked for
    train(tiny(test=False), tmp_path / "s", progress=False)
    summary = train(tiny(test=True), tmp_path / "s", resume=True, progress=False)
    assert opened[-1] == "test" and summary["test_n"] == 100


#: Reference figures of two fixed tiny runs: (epoch, lr, train_loss, train_acc, valid_loss,
#: valid_acc) per epoch, then the test accuracy. Produced by the code before
#: hnets.training was split into a package (commit 4b6f9c4ec53f5d7bca7cc31e35ec3e006c3d7ea1,
#: torch 2.13.0+cpu, one thread, an Intel Xeon with AVX-512). Epochs, learning rates and
#: accuracies (counts of right answers) must match exactly on any CPU; the losses within
#: LOSS_RTOL, since float round-off differs between CPUs and instruction sets (an AMD
#: EPYC gives 2.183837115764618 for 2.183837056159973: 3e-8 relative). A deliberate
#: change of the numbers (another recipe, a new torch) updates them.
LOSS_RTOL = 1e-5
REFERENCE_RUNS = {
    "cnn": (
        TrainConfig(
            model="cnn",
            model_options={"eval_blur": 0.0},  # the figures predate it; training ignores it
            epochs=2,
            limit_train=128,
            limit_eval=64,
            batch_size=32,
            seed=3,
            device="cpu",
            train_split="train",
        ),
        [
            (1, 0.01, 2.3277775645256042, 0.0859375, 2.2948198318481445, 0.125),
            (2, 0.0014644660940672626, 2.183837056159973, 0.171875, 2.374265670776367, 0.125),
        ],
        0.109375,
    ),
    "hnet": (
        TrainConfig(
            model="hnet",
            model_options={"width": 0.5, "eval_blur": 0.0},
            epochs=2,
            limit_train=64,
            limit_eval=64,
            batch_size=16,
            seed=5,
            device="cpu",
            train_split="train",
            optimizer="sgd",
            schedule="onecycle",
        ),
        [
            (1, 0.00466506484920706, 2.372164785861969, 0.140625, 3.331869125366211, 0.0625),
            (2, 0.0003349551507929411, 2.32448011636734, 0.1875, 2.573315143585205, 0.046875),
        ],
        0.109375,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_RUNS))
def test_a_fixed_run_reproduces_its_reference_figures_exactly(tmp_path, data_env, name):
    """Seeding, model build, data order and augmentation draw in the same order as ever;
    and the same run twice on one machine gives identical figures, bit for bit."""
    config, rows, test_accuracy = REFERENCE_RUNS[name]
    keys = ("epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc")
    runs = []
    for i in range(2):
        summary = train(dataclasses.replace(config), tmp_path / f"run{i}", progress=False)
        runs.append(
            ([tuple(row[k] for k in keys) for row in metrics(tmp_path / f"run{i}")], summary)
        )
    (got, summary), (again, summary_again) = runs
    assert got == again and summary["test_accuracy"] == summary_again["test_accuracy"]
    exact = [(r[0], r[1], r[3], r[5]) for r in got]
    assert exact == [(r[0], r[1], r[3], r[5]) for r in rows]
    losses = [loss for r in got for loss in (r[2], r[4])]
    assert losses == pytest.approx([loss for r in rows for loss in (r[2], r[4])], rel=LOSS_RTOL)
    assert summary["test_accuracy"] == test_accuracy
