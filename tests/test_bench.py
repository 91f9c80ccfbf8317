"""The benchmark helpers run and report ratios (timings themselves are never asserted)."""

import pytest
import torch

from hnets.bench import (
    compare,
    dense_equivalent_cnn,
    format_report,
    saved_activation_bytes,
    training_step_peak_bytes,
)
from hnets.models import HNetMNIST


def test_compare_reports_ratios_relative_to_the_first_candidate():
    calls = []
    timings = compare(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert [t.name for t in timings] == ["a", "b"]
    assert timings[0].ratio == 1.0 and timings[1].ratio > 0
    assert calls[2:] == ["a", "b"] * 3  # interleaved after the warm-up


def test_dense_equivalent_cnn_has_the_hnet_dense_shapes():
    plain = dense_equivalent_cnn(HNetMNIST())
    shapes = [
        (m.in_channels, m.out_channels) for m in plain.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    assert shapes == [(1, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 20)]
    assert plain(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_format_report_prints_ratios():
    timings = compare({"x": lambda: None, "y": lambda: None}, repeats=1, warmup=0)
    text = format_report(
        {
            "machine": "m",
            "batch": 46,
            "conv": timings,
            "models": {"train": timings},
            "memory": {"x": {"step peak": 1.0}},
        }
    )
    assert "ratio" in text and "speed-up" in text and "MiB" in text


def test_training_step_memory_of_the_hnet_stays_below_the_dense_equivalent_cnn():
    """Issue #2's memory bound, measured exactly (byte counts, not timings)."""
    hnet = HNetMNIST()
    plain = dense_equivalent_cnn(hnet)
    saved = {m: saved_activation_bytes(m, batch=46) for m in (hnet, plain)}
    assert saved[hnet] <= saved[plain]
    peak_hnet = training_step_peak_bytes(hnet, batch=46)
    peak_plain = training_step_peak_bytes(plain, batch=46)
    if peak_hnet is None:
        pytest.skip("torch's MemTracker is not available in this build")
    assert peak_hnet["total"] <= peak_plain["total"]
    # the tracker sees what a step must hold: the parameters' gradients and AdamW's moments
    params = sum(p.numel() * p.element_size() for p in hnet.parameters())
    assert peak_hnet["parameter"] == params
    assert peak_hnet["optstate"] >= 2 * params


def test_saved_activation_bytes_counts_what_autograd_keeps():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 28 * 28, 10)
    )
    # conv keeps its input (46x1x28x28), linear keeps its input (the flattened conv
    # output); the loss adds its log-softmax (46x10), the int64 targets and a scalar
    expected = 46 * 28 * 28 * 4 + 46 * 4 * 28 * 28 * 4 + 46 * 10 * 4 + 46 * 8
    assert expected <= saved_activation_bytes(net, batch=46) <= expected + 16


def test_compare_with_several_calls_settles_each_candidate_first():
    calls = []
    timings = compare(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        repeats=2,
        warmup=0,
        calls=3,
    )
    assert calls == (["a"] * 4 + ["b"] * 4) * 2  # one untimed, three timed, per sample
    assert all(t.median_s >= 0 for t in timings)


def test_memory_figures_do_not_depend_on_tuning(monkeypatch, tmp_path):
    """bench_memory runs the fixed table: a cold tuning cache (whose trials would run
    inside the measurement) and measured dispatch give the same byte counts."""
    from hnets.bench import bench_memory

    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HNETS_AUTOTUNE", "0")
    fixed = bench_memory(batch=8)
    monkeypatch.setenv("HNETS_AUTOTUNE", "1")
    assert bench_memory(batch=8) == fixed
    assert not list(tmp_path.glob("autotune-*.json"))  # nothing was measured


def test_the_channel_layouts_benchmark_prints_a_row_per_layout():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import hnets

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "HNETS_AUTOTUNE": "0"}
    args = ["--layouts", "4,4,4", "2,3,4", "--batch", "2", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "channel_layouts.py"), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "," in line]
    params = hnets.count_parameters(hnets.build_model("hnet", channels=(2, 3, 4)))
    assert rows[0].startswith("| 4,4,4 | ") and "| 1.00 |" in rows[0]
    assert rows[1].startswith(f"| 2,3,4 | {params:,} | ")


def _benchmark(name: str):  # noqa: ANN202
    """A script of ``benchmarks/`` imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dispatch_replay_runs_the_dispatch_trial_rules(monkeypatch) -> None:
    import math

    from hnets.nn import dispatch

    replay = _benchmark("dispatch_replay").replay
    monkeypatch.setattr(dispatch, "DROP_RATIO", dispatch.DROP_RATIO)  # replay sets it
    samples = {"a": [9.0] + [1.0] * 9, "b": [9.0] + [1.5] * 9, "c": [9.0] + [1.1] * 9}
    choice, made = replay(samples, math.inf)  # seconds per call: over budget at once
    assert choice == "a" and made == dict.fromkeys("abc", 1 + dispatch.MIN_ROUNDS)
    choice, made = replay(samples, 1.25)  # b drops out after its first timed call
    assert choice == "a" and made == {"a": 4, "b": 2, "c": 4}
    choice, made = replay(samples, 1.05)  # both others: decided after one round
    assert choice == "a" and made == {"a": 2, "b": 2, "c": 2}


def test_compare_caches_counts_agreement_and_grades_choices(tmp_path, capsys, monkeypatch) -> None:
    import json
    import sys

    main = _benchmark("compare_caches").main

    def cache(name: str, choices: dict[str, str], seconds: dict[str, float]) -> str:
        path = tmp_path / f"{name}.json"
        decisions = {k: {"choice": c, "seconds": seconds} for k, c in choices.items()}
        path.write_text(json.dumps({"format": 1, "decisions": decisions}))
        return str(path)

    times = {"dense": 1.0, "gauss": 1.1}
    a = cache("a", {"k1": "dense", "k2": "dense"}, times)
    b = cache("b", {"k1": "gauss", "k2": "dense"}, times)
    monkeypatch.setattr(sys, "argv", ["compare_caches.py", f"one={a}", f"two={b}"])
    main()
    out = capsys.readouterr().out
    assert "2 signatures in all 2 files" in out
    assert "one1 vs two1: 1 of 2 alike" in out
    assert "differs: k1:" in out and "differs: k2" not in out
    assert "one: chosen schemes 0.0% slower" in out
    assert "two: chosen schemes 5.0% slower" in out  # 10% on one of two signatures
