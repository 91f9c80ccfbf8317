"""Runs that are killed, interrupted, fed hostile files, out of disk, or spread over processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hnets.training.rundir
from hnets.checkpoint import load_training_state
from hnets.cli import main
from hnets.errors import HNetsError
from hnets.training import TrainConfig, train

from ..conftest import one_error_line, subprocess_env

pytestmark = pytest.mark.usefixtures("one_thread")

# 48 images in batches of 4: 12 steps an epoch, so Ctrl-C can land mid-epoch (the loop
# checks for it every 10 steps); a width-0.25 hnet keeps each step a few milliseconds.
RUN_ARGS = [
    "train",
    "--model",
    "hnet",
    "--width",
    "0.25",
    "--epochs",
    "3",
    "--batch-size",
    "4",
    "--limit-train",
    "48",
    "--limit-eval",
    "48",
    "--device",
    "cpu",
    "--no-progress",
]
STEPS_PER_EPOCH = 12
TIMING_KEYS = {"seconds", "train_seconds", "images_per_s"}

# Runs ``hnets`` with every step slowed down and announced on stdout ("STEP <n>"), so
# that a test can kill the process at a chosen point. Sleeping changes no numbers.
SLOW_WRAPPER = """
import sys, time
import hnets.training.loop as loop
from hnets.cli import main

real_lr_at = loop.lr_at

def announced_lr_at(config, step, steps_per_epoch):
    print(f"STEP {step}", flush=True)
    time.sleep(float(sys.argv[1]))
    return real_lr_at(config, step, steps_per_epoch)

loop.lr_at = announced_lr_at  # where the training loop looks it up
sys.exit(main(sys.argv[2:]))
"""


def start_slow(tmp_path: Path, env: dict, out: Path, delay: float = 0.05) -> subprocess.Popen:
    wrapper = tmp_path / "slow_hnets.py"
    wrapper.write_text(SLOW_WRAPPER)
    return subprocess.Popen(
        [sys.executable, str(wrapper), str(delay), *RUN_ARGS, "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(proc: subprocess.Popen, step: int) -> None:
    for line in proc.stdout:
        if line.startswith("STEP ") and int(line.split()[1]) >= step:
            return
    raise AssertionError(f"the run ended before step {step}: {proc.wait()} {proc.stderr.read()}")


def wait_for_lines(proc: subprocess.Popen, path: Path, lines: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        assert proc.poll() is None, "the run ended too early"
        time.sleep(0.005)
    raise AssertionError(f"{path} never reached {lines} lines")


def outcome(out: Path) -> tuple[dict, list[dict], dict[str, torch.Tensor]]:
    """What must not depend on interruptions: summary metrics, per-epoch metrics, weights."""
    summary = json.loads((out / "summary.json").read_text())
    kept = {k: summary[k] for k in ("test", "best_epoch", "valid_accuracy", "valid_loss", "epochs")}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]
    return kept, rows, load_file(out / "model.safetensors")


def assert_same_outcome(a: Path, b: Path) -> None:
    summary_a, rows_a, weights_a = outcome(a)
    summary_b, rows_b, weights_b = outcome(b)
    assert summary_a == summary_b
    assert rows_a == rows_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.fixture(scope="module")
def reference_run(rotmnist_root, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(
        [sys.executable, "-m", "hnets", *RUN_ARGS, "--out", str(out)],
        env=subprocess_env(rotmnist_root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_gives_the_same_run(tmp_path, data_env, reference_run):
    env = subprocess_env(data_env)
    # where to kill: mid-epoch 1 (no checkpoint yet), just after epoch 1 was logged, mid-epoch 3
    plans = {
        "early": ("step", 5),
        "epoch1": ("lines", 1),
        "late": ("step", 2 * STEPS_PER_EPOCH + 7),
    }
    procs = {name: start_slow(tmp_path, env, tmp_path / name) for name in plans}
    for name, (kind, at) in plans.items():
        proc = procs[name]
        if kind == "step":
            wait_for_step(proc, at)
        else:
            wait_for_lines(proc, tmp_path / name / "metrics.jsonl", at)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        proc.stdout.close()
        proc.stderr.close()
    assert load_training_state(tmp_path / "late" / "checkpoint.pt")["epoch"] == 2
    assert not (tmp_path / "late" / "summary.json").exists()
    for name in plans:
        done = subprocess.run(
            [sys.executable, "-m", "hnets", *RUN_ARGS, "--out", str(tmp_path / name), "--resume"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert_same_outcome(tmp_path / name, reference_run)


@pytest.mark.slow
def test_ctrl_c_saves_a_mid_epoch_checkpoint_that_resumes_exactly(
    tmp_path, data_env, reference_run
):
    env = subprocess_env(data_env)
    out = tmp_path / "run"
    proc = start_slow(tmp_path, env, out)
    wait_for_step(proc, STEPS_PER_EPOCH + 2)  # epoch 2, before its check at step 10
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "stopped at epoch 2, step 10" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    state = load_training_state(out / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 10)
    done = subprocess.run(
        [sys.executable, "-m", "hnets", *RUN_ARGS, "--out", str(out), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert_same_outcome(out, reference_run)


class _Crash(BaseException):
    """A crash no handler catches, standing in for a power cut between two writes."""


def tiny(**changes) -> TrainConfig:
    return TrainConfig(
        model="cnn",
        model_options={"width": 0.5},
        epochs=2,
        batch_size=16,
        limit_train=64,
        limit_eval=64,
        device="cpu",
        **changes,
    )


@pytest.mark.slow
@pytest.mark.parametrize("crash_in", ["save_model", "append_line"])
def test_a_crash_between_writes_resumes_to_the_same_run(tmp_path, data_env, monkeypatch, crash_in):
    """Killed after checkpoint.pt of epoch 2 was written but before the model or metrics.

    With train+valid the model is saved every epoch, so epoch 2 always calls save_model.
    """
    config = tiny(train_split="train+valid")
    train(config, tmp_path / "straight", progress=False)
    # every file of a run is written from hnets.training.rundir
    real = getattr(hnets.training.rundir, crash_in)
    calls = []

    def crash_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(load_training_state(tmp_path / "run" / "checkpoint.pt")["history"]) == 2:
            raise _Crash
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(hnets.training.rundir, crash_in, crash_in_epoch_two)
        with pytest.raises(_Crash):
            train(config, tmp_path / "run", progress=False)
    assert len(calls) == 2
    train(config, tmp_path / "run", resume=True, progress=False)
    assert_same_outcome(tmp_path / "run", tmp_path / "straight")


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_keeps_the_previous_checkpoint(
    tmp_path, data_env, monkeypatch
):
    real_replace = os.replace
    out = tmp_path / "run"

    def full_once_epoch_one_is_saved(src, dst):
        if Path(dst).name == "checkpoint.pt" and Path(dst).exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", full_once_epoch_one_is_saved)
        with pytest.raises(HNetsError, match="cannot write .*checkpoint.pt: No space left") as info:
            train(tiny(), out, progress=False)
    assert "\n" not in str(info.value)
    assert load_training_state(out / "checkpoint.pt")["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_an_unwritable_output_directory_fails_before_training(tmp_path, data_env, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(
        [
            "train",
            "--model",
            "cnn",
            "--limit-train",
            "16",
            "--out",
            str(blocker / "run"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert one_error_line(capsys).startswith("hnets: error: cannot write into")


def _model_dir(tmp_path: Path) -> Path:
    from hnets import build_model, save_model

    return save_model(build_model("cnn", width=0.5), tmp_path / "model")


def test_hostile_files_are_refused_everywhere(tmp_path, data_env, capsys, malicious_pickles):
    from PIL import Image

    marker, payloads = malicious_pickles
    image = tmp_path / "digit.png"
    img = Image.new("L", (20, 20), 0)
    img.paste(255, (5, 3, 12, 17))
    img.save(image)
    for kind, payload in payloads.items():
        for name in ("model.safetensors", "config.json"):
            ckpt = _model_dir(tmp_path / kind / name)
            (ckpt / name).write_bytes(payload)
            for argv in (
                ["test", "--checkpoint", str(ckpt), "--limit", "10"],
                ["predict", "--checkpoint", str(ckpt), str(image)],
            ):
                assert main(argv) == 2
                assert name in one_error_line(capsys)
        run = tmp_path / kind / "run"
        run.mkdir(parents=True)
        (run / "checkpoint.pt").write_bytes(payload)
        assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "checkpoint.pt" in err and "\n" not in err
        assert "refused" in err or "not a readable" in err or "unknown format" in err
    assert not marker.exists()


@pytest.mark.slow
def test_torchrun_with_two_processes(tmp_path, data_env):
    common = [
        "--model",
        "cnn",
        "--width",
        "0.5",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--limit-train",
        "64",
        "--limit-eval",
        "64",
        "--device",
        "cpu",
        "--no-progress",
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "hnets",
            "train",
            *common,
            "--out",
            str(tmp_path / "ddp"),
        ],
        env=subprocess_env(data_env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # rank 0 alone reports
    state = load_training_state(tmp_path / "ddp" / "checkpoint.pt")
    assert state["world_size"] == 2 and state["epoch"] == 2
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["test_n"] == 64
    rows = [
        json.loads(line)
        for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().split("\n")
        if line
    ]
    single = train(tiny(), tmp_path / "single", progress=False)
    single_rows = [
        json.loads(line)
        for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["train_n"] for r in rows] == [r["train_n"] for r in single_rows] == [64, 64]
    assert single["world_size"] == 1
    from hnets import load_model

    assert load_model(tmp_path / "ddp").hnets_config["name"] == "cnn"
