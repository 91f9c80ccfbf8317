"""The benchmark helpers run and report ratios (timings themselves are never asserted)."""

import torch

from hnets.bench import compare, dense_equivalent_cnn, format_report
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
            "memory": {"x": 1.0},
        }
    )
    assert "ratio" in text and "speed-up" in text and "MiB" in text
