"""Dataset statistics, the text report and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hnets.data import RotMNIST, dataset_stats, format_stats, write_stats_figures

PNG = b"\x89PNG\r\n\x1a\n"


def test_stats_match_the_labels(tmp_path: Path, kit) -> None:
    kit.write_synthetic_variant(tmp_path, "standin", sizes=(50, 10, 30))
    stats = dataset_stats(tmp_path)
    assert stats["variant"] == "standin" and stats["source"] == "synthetic"
    for split, n in (("train", 50), ("valid", 10), ("test", 30)):
        entry = stats["splits"][split]
        labels = RotMNIST(tmp_path, split).labels.numpy()
        assert entry["n"] == n
        assert entry["counts"] == np.bincount(labels, minlength=10).tolist()
        assert sum(entry["percent"]) == pytest.approx(100.0)
        assert 0.0 <= entry["angles"]["min"] <= entry["angles"]["max"] < 6.3
    limited = dataset_stats(tmp_path, limit=5)
    assert [e["n"] for e in limited["splits"].values()] == [5, 5, 5]


def test_format_stats_table(tmp_path: Path, kit) -> None:
    kit.write_synthetic_variant(tmp_path, "original", sizes=(20, 10, 10))
    stats = dataset_stats(tmp_path)
    text = format_stats(stats)
    lines = text.splitlines()
    assert "variant 'original'" in lines[0]
    assert any(line.split()[:3] == ["train", "20", "unknown"] for line in lines)
    counts = stats["splits"]["train"]["counts"]
    row_for_7 = next(line for line in lines if line.startswith("7 "))
    assert row_for_7.split()[1] == str(counts[7])
    assert f"({stats['splits']['train']['percent'][7]:5.2f}%)" in row_for_7


def test_figures_are_written_atomically(tmp_path: Path, kit) -> None:
    kit.write_synthetic_variant(tmp_path / "data", "standin", sizes=(40, 10, 10))
    out = tmp_path / "figs"
    paths = write_stats_figures(tmp_path / "data", out, limit=20)
    names = sorted(p.name for p in paths)
    assert names == [
        "angle_histogram.png",
        "class_histogram.png",
        "samples_test.png",
        "samples_train.png",
        "samples_valid.png",
    ]
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files left
    for path in paths:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 2000


def test_no_angle_histogram_without_angles(tmp_path: Path, kit) -> None:
    kit.write_synthetic_variant(tmp_path / "data", "original", sizes=(10, 5, 5))
    paths = write_stats_figures(tmp_path / "data", tmp_path / "figs")
    assert "angle_histogram.png" not in {p.name for p in paths} and len(paths) == 4
