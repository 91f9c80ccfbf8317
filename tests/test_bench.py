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
    """bench_memory runs the fixed table: a tuning cache that chose other schemes gives
    the same byte counts."""
    from hnets.bench import HNetMNIST, bench_memory
    from hnets.nn import HConv2d, dispatch

    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path))
    dispatch.clear_memory()
    table = bench_memory(batch=8)
    model, x = HNetMNIST(), torch.rand(8, 1, 28, 28)
    keys: list[str] = []
    for m in model.modules():  # every layer's training signature tuned to dense-nchw
        if isinstance(m, HConv2d):
            m.register_forward_pre_hook(
                lambda mod, a: keys.append(mod.dispatch_key(a[0], training=True))
            )
    model(x)
    entry = {"choice": "dense-nchw", "seconds": dict.fromkeys(
        ("dense", "dense-nchw", "gauss", "karatsuba"), 1.0)}  # fmt: skip
    dispatch.record({k: entry for k in keys})
    try:
        assert bench_memory(batch=8) == table
    finally:
        dispatch.clear_memory()


def test_the_channel_layouts_benchmark_prints_a_row_per_layout():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import hnets

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
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
