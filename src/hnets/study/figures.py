"""The study's figure: test error against training-set size, and the gap below."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..data.registry import DATASETS
from .plan import StudyConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["error_vs_size_figure"]


def error_vs_size_figure(
    summary: Sequence[dict[str, Any]],
    gaps: Sequence[dict[str, Any]],
    config: StudyConfig,
    standin: Iterable[str] = (),
) -> Figure:
    """Test error vs training size per dataset (and the gap below); ``standin``: datasets
    whose runs used a stand-in, which their panel titles say."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    datasets = [d for d in config.datasets if any(r["dataset"] == d for r in summary)]
    rows = 2 if gaps else 1
    fig = Figure(figsize=(5.0 * len(datasets), 3.8 + 2.6 * (rows - 1)), layout="constrained")
    axes = fig.subplots(
        rows, len(datasets), squeeze=False, sharex="col", height_ratios=[3, 2][:rows]
    )
    for column, dataset in enumerate(datasets):
        ax = axes[0][column]
        for model in config.models:
            points = sorted(
                (r["train_size"], r["mean_test_error"], r["std_test_error"] or 0.0)
                for r in summary
                if r["dataset"] == dataset and r["model"] == model
            )
            if not points:
                continue
            sizes, means, stds = zip(*points, strict=True)
            ax.errorbar(
                sizes,
                [100 * m for m in means],
                yerr=[100 * s for s in stds],
                marker="o",
                capsize=3,
                label=model,
            )
        ax.set_xscale("log")
        panel_sizes = sorted({r["train_size"] for r in summary if r["dataset"] == dataset})
        if len(panel_sizes) == 1:  # one size (a quick study): a range around it, not a point
            (size,) = panel_sizes
            ax.set_xlim(size / 2, size * 2)
        ax.set_ylabel("test error (%), ± 1 sd")
        title = DATASETS[dataset].title
        ax.set_title(f"{title} (stand-in)" if dataset in standin else title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        if rows == 2:
            _draw_gap(axes[1][column], [g for g in gaps if g["dataset"] == dataset])
        ax = axes[rows - 1][column]  # after every set_xscale (which resets the ticks)
        ax.set_xticks(panel_sizes, labels=[f"{n:,}" for n in panel_sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("training images")
    return fig


def _draw_gap(ax: Any, gaps: Sequence[dict[str, Any]]) -> None:
    """The CNN's test error minus the H-Net's against size, error bars one standard error."""
    points = sorted((g["train_size"], g["gap_points"], g["gap_se_points"] or 0.0) for g in gaps)
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    if points:
        sizes, gap, se = zip(*points, strict=True)
        ax.errorbar(sizes, gap, yerr=se, marker="o", capsize=3, color="C2")
    ax.set_xscale("log")
    ax.set_ylabel("CNN − H-Net (points), ± 1 se")
    ax.grid(alpha=0.3, which="both")
