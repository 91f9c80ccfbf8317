"""Dataset analysis: per-split sizes, class balance, angle distribution, and figures.

Figures are drawn with matplotlib's Agg canvas (no pyplot, no display needed) and
written as PNG through :func:`hnets._io.save_figure` (atomic).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import save_figure
from .cache import (
    SPLITS,
    SplitArrays,
    load_split,
    manifest_classes,
    manifest_title,
    read_manifest,
)
from .locate import locate_variant

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["dataset_stats", "format_stats", "write_stats_figures"]

_GRID_ROWS, _GRID_COLS = 4, 8
_ANGLE_BINS = 36


def dataset_stats(
    root: str | os.PathLike[str] | None = None,
    variant: str | None = None,
    limit: int | None = None,
    *,
    dataset: str | None = None,
    **folder_options: Any,
) -> dict[str, Any]:
    """Sample counts, class balance and angle summary of every split.

    Args:
        root: data directory or variant directory (as for :func:`load_dataset`).
        variant: which variant (``None``: the dataset's default).
        limit: only the first ``limit`` samples of each split.
        dataset: ``rotmnist`` (default), ``rotfashion`` or ``folder:PATH``.
        folder_options: ``image_size``, ``channels``, ``skip_bad`` for folders.

    Returns:
        ``{"dataset", "title", "classes", "variant", "root", "source", "seed",
        "splits": {split: {"n", "counts" (one int per class), "percent", "angles"
        ({"min", "max", "mean", "std"} in radians, or None)}}}``.
    """
    vdir = locate_variant(root, variant, dataset=dataset, **folder_options)
    manifest = read_manifest(vdir)
    classes = manifest_classes(manifest)
    splits = {}
    for split in SPLITS:
        arrays = load_split(
            vdir, split, limit=limit, fields=("labels", "angles"), manifest=manifest
        )
        splits[split] = _split_stats(arrays, len(classes))
    source = manifest.get("source")
    return {
        "dataset": manifest.get("dataset", "rotmnist"),
        "title": manifest_title(manifest),
        "classes": list(classes),
        "variant": manifest["variant"],
        "root": str(vdir),
        "source": source.get("kind") if isinstance(source, dict) else None,
        "seed": manifest.get("seed"),
        "splits": splits,
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text report of :func:`dataset_stats`: sizes, then the class balance table."""
    splits = stats["splits"]
    classes = stats.get("classes") or [str(d) for d in range(10)]
    title = stats.get("title", "Rot-MNIST")
    lines = [f"{title} variant {stats['variant']!r} in {stats['root']}", ""]
    lines.append(f"{'split':<8}{'samples':>9}  angles (degrees)")
    for split, entry in splits.items():
        angles = entry["angles"]
        span = (
            f"{math.degrees(angles['min']):6.1f} to {math.degrees(angles['max']):6.1f}"
            if angles
            else "unknown"
        )
        lines.append(f"{split:<8}{entry['n']:>9}  {span}")
    head = "digit" if stats.get("dataset", "rotmnist") == "rotmnist" else "class"
    width = max(7, *(len(c) + 2 for c in classes))
    lines += [
        "",
        "class balance: count (percent)",
        f"{head:<{width}}" + "".join(f"{s:>18}" for s in splits),
    ]
    for k, name in enumerate(classes):
        cells = "".join(
            f"{entry['counts'][k]:>9} ({entry['percent'][k]:5.2f}%)" for entry in splits.values()
        )
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


def write_stats_figures(
    root: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    variant: str | None = None,
    limit: int | None = None,
    *,
    dataset: str | None = None,
    **folder_options: Any,
) -> list[Path]:
    """Write the analysis figures as PNG files into ``out_dir``.

    Files: ``samples_<split>.png`` (a grid of the first images with their class
    names and angles), ``class_histogram.png`` (percent per class and split) and,
    when the angles are known, ``angle_histogram.png``.

    Args:
        root: data directory or variant directory.
        out_dir: where the figures go (created).
        variant: which variant.
        limit: use only the first ``limit`` samples of each split.
        dataset: ``rotmnist`` (default), ``rotfashion`` or ``folder:PATH``.
        folder_options: ``image_size``, ``channels``, ``skip_bad`` for folders.

    Returns:
        The paths written.
    """
    vdir = locate_variant(root, variant, dataset=dataset, **folder_options)
    manifest = read_manifest(vdir)
    classes = manifest_classes(manifest)
    data = {split: load_split(vdir, split, limit=limit, manifest=manifest) for split in SPLITS}
    out_dir = Path(out_dir)
    title = f"{manifest_title(manifest)} ({manifest['variant']})"
    written = []
    for split, arrays in data.items():
        path = out_dir / f"samples_{split}.png"
        save_figure(_sample_grid(arrays, f"{title}, {split}", classes), path, dpi=100)
        written.append(path)
    path = out_dir / "class_histogram.png"
    save_figure(_class_histogram(data, title, classes), path, dpi=100)
    written.append(path)
    if all(arrays.angles is not None for arrays in data.values()):
        path = out_dir / "angle_histogram.png"
        save_figure(_angle_histogram(data, title), path, dpi=100)
        written.append(path)
    return written


def _split_stats(arrays: SplitArrays, n_classes: int = 10) -> dict[str, Any]:
    n = len(arrays)
    counts = np.bincount(arrays.labels, minlength=n_classes)[:n_classes]
    percent = counts * (100.0 / n) if n else np.zeros(n_classes)
    angles = None
    if arrays.angles is not None and n:
        a = arrays.angles.astype(np.float64)
        angles = {"min": a.min(), "max": a.max(), "mean": a.mean(), "std": a.std()}
        angles = {k: float(v) for k, v in angles.items()}
    return {
        "n": n,
        "counts": [int(c) for c in counts],
        "percent": [float(p) for p in percent],
        "angles": angles,
    }


def _sample_grid(arrays: SplitArrays, title: str, classes: tuple[str, ...]) -> Figure:
    from matplotlib.figure import Figure  # plotting loads matplotlib, not the import

    fig = Figure(figsize=(_GRID_COLS * 1.1, _GRID_ROWS * 1.3))
    fig.suptitle(title)
    for i in range(_GRID_ROWS * _GRID_COLS):
        ax = fig.add_subplot(_GRID_ROWS, _GRID_COLS, i + 1)
        ax.set_axis_off()
        if i >= len(arrays):
            continue
        image = arrays.chw[i]
        if image.shape[0] == 1:
            ax.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(np.clip(image.transpose(1, 2, 0), 0.0, 1.0))
        label = classes[int(arrays.labels[i])]
        if arrays.angles is not None:
            gap = "\n" if len(label) > 3 else " "
            label += f"{gap}({math.degrees(float(arrays.angles[i])):.0f}°)"
        ax.set_title(label, fontsize=8 if len(label) < 12 else 7)
    return fig


def _class_histogram(data: dict[str, SplitArrays], title: str, classes: tuple[str, ...]) -> Figure:
    n_classes = len(classes)
    from matplotlib.figure import Figure  # plotting loads matplotlib, not the import

    fig = Figure(figsize=(max(7.0, 0.7 * n_classes), 3.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(data)
    top = 0.0
    for k, (split, arrays) in enumerate(data.items()):
        stats = _split_stats(arrays, n_classes)
        top = max(top, *stats["percent"])
        ax.bar(
            np.arange(n_classes) + (k - (len(data) - 1) / 2) * width,
            stats["percent"],
            width,
            label=f"{split} (n={stats['n']})",
        )
    digits = classes == tuple(str(d) for d in range(n_classes))
    ax.set_xticks(range(n_classes), classes, rotation=0 if digits else 30, fontsize=8)
    ax.set_xlabel("digit" if digits else "class")
    ax.set_ylabel("percent of split")
    ax.set_title(f"{title}: class balance")
    ax.set_ylim(0.0, 1.3 * top if top > 0 else 1.0)
    ax.legend(fontsize=8, ncols=len(data), loc="upper center")
    return fig


def _angle_histogram(data: dict[str, SplitArrays], title: str) -> Figure:
    from matplotlib.figure import Figure  # plotting loads matplotlib, not the import

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0.0, 360.0, _ANGLE_BINS + 1)
    for split, arrays in data.items():
        ax.hist(np.degrees(arrays.angles), bins=bins, density=True, histtype="step", label=split)
    ax.set_xlabel("rotation angle (degrees)")
    ax.set_ylabel("density")
    ax.set_title(f"{title}: angles")
    ax.legend(fontsize=8, ncols=len(data), loc="lower center")
    return fig
