"""The main job at a small size, as ``make demo`` runs it: train -> validate -> train -> test,
in a fresh process with a fresh cache directory and the default configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..conftest import subprocess_env


def test_train_validate_train_then_test_as_make_demo_does(tmp_path: Path, data_env: Path) -> None:
    env = {**subprocess_env(data_env), "HNETS_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "demo"

    def hnets(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "hnets", *args],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    done = hnets(
        "train", "--model", "hnet", "--epochs", "3", "--train-split", "train",
        "--limit-train", "160", "--limit-eval", "96", "--batch-size", "32",
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validated = [e["epoch"] for e in epochs if e.get("valid_acc") is not None]
    assert validated == [1, 2, 3]  # every epoch after the first trained after a validation
    tested = hnets("test", "--checkpoint", str(out), "--limit", "96")
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "accuracy" in tested.stdout.lower()
