"""The study's tables: one row per run, the summary per size, the gap, and Markdown."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write
from .plan import StudyRun

__all__ = [
    "RESULT_FIELDS",
    "SUMMARY_FIELDS",
    "GAP_FIELDS",
    "CRISP_FIELDS",
    "result_row",
    "summarise",
    "gap_rows",
    "write_csv",
    "standin_datasets",
    "time_line",
    "markdown_report",
]

RESULT_FIELDS = (
    "dataset",
    "variant",
    "model",
    "train_size",
    "seed",
    "epochs",
    "params",
    "valid_error",
    "test_error",
    "wall_seconds",
    "threads",
)
SUMMARY_FIELDS = ("dataset", "model", "train_size", "n_seeds", "mean_test_error", "std_test_error")
GAP_FIELDS = ("dataset", "train_size", "gap_points", "gap_se_points", "hnet_seeds", "cnn_seeds")
CRISP_FIELDS = (
    "dataset",
    "model",
    "train_size",
    "seed",
    "n",
    "rotated",
    "crisp_0",
    "crisp_90",
    "crisp_180",
    "crisp_270",
)


def result_row(run: StudyRun, summary: dict[str, Any]) -> dict[str, Any]:
    valid, test = summary.get("valid_accuracy"), summary.get("test_error")
    return {
        "dataset": run.dataset,
        "variant": run.variant,
        "model": run.model,
        "train_size": run.train_size,
        "seed": run.seed,
        "epochs": summary.get("epochs"),
        "params": summary.get("parameters"),
        "valid_error": None if valid is None else round(1.0 - valid, 6),
        "test_error": None if test is None else round(float(test), 6),  # 1 - accuracy
        "wall_seconds": round(float(summary.get("wall_seconds") or 0.0), 1),
        "threads": summary.get("threads"),
    }


def time_line(rows: Sequence[dict[str, Any]]) -> str:
    """Wall time in all, and core time (wall x threads) where the thread count is known."""
    hours = sum(float(r["wall_seconds"]) for r in rows) / 3600
    known = [r for r in rows if r.get("threads") not in (None, "")]
    line = f"{len(rows)} runs, {hours:.2f} hours of wall time in all"
    if known:
        core = sum(float(r["wall_seconds"]) * int(r["threads"]) for r in known) / 3600
        line += f"; {core:.2f} core-hours for the {len(known)} with a recorded thread count"
    return line + "."


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int], list[float]] = {}
    for row in rows:
        if row["test_error"] is not None:
            key = (row["dataset"], row["model"], row["train_size"])
            groups.setdefault(key, []).append(float(row["test_error"]))
    out = []
    for (dataset, model, size), errors in groups.items():
        out.append(
            {
                "dataset": dataset,
                "model": model,
                "train_size": size,
                "n_seeds": len(errors),
                "mean_test_error": round(statistics.fmean(errors), 6),
                "std_test_error": round(statistics.stdev(errors), 6) if len(errors) > 1 else None,
            }
        )
    return out


def gap_rows(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """CNN minus H-Net mean test error (points) per dataset and size, with Welch's SE."""
    by_key = {(r["dataset"], r["model"], r["train_size"]): r for r in summary}
    out = []
    for dataset, size in sorted({(r["dataset"], r["train_size"]) for r in summary}):
        hnet, cnn = by_key.get((dataset, "hnet", size)), by_key.get((dataset, "cnn", size))
        if hnet is None or cnn is None:
            continue
        se = None
        if hnet["std_test_error"] is not None and cnn["std_test_error"] is not None:
            variance = (
                hnet["std_test_error"] ** 2 / hnet["n_seeds"]
                + cnn["std_test_error"] ** 2 / cnn["n_seeds"]
            )
            se = round(100 * math.sqrt(variance), 4)
        out.append(
            {
                "dataset": dataset,
                "train_size": size,
                "gap_points": round(100 * (cnn["mean_test_error"] - hnet["mean_test_error"]), 4),
                "gap_se_points": se,
                "hnet_seeds": hnet["n_seeds"],
                "cnn_seeds": cnn["n_seeds"],
            }
        )
    return out


def write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> Path:
    with atomic_write(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in fields})
    return path


def standin_datasets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The datasets whose runs read a stand-in (which figures and tables must say)."""
    return sorted({r["dataset"] for r in rows if r["variant"] == "standin"})


def markdown_report(
    rows: Sequence[dict[str, Any]],
    summary: Sequence[dict[str, Any]],
    missing: Sequence[str],
    crisp: Sequence[dict[str, Any]] = (),
    gaps: Sequence[dict[str, Any]] = (),
) -> str:
    lines = [
        "| dataset | training images | H-Net test error | CNN test error "
        "| CNN − H-Net (points) | seeds |"
    ]
    lines.append("|---|---:|---:|---:|---:|---:|")
    by_key = {(r["dataset"], r["model"], r["train_size"]): r for r in summary}
    gap_of = {(g["dataset"], g["train_size"]): g for g in gaps}
    for dataset, size in sorted({(r["dataset"], r["train_size"]) for r in summary}):
        cells = []
        seeds = []
        for model in ("hnet", "cnn"):
            entry = by_key.get((dataset, model, size))
            if entry is None:
                cells.append("—")
                continue
            std = entry["std_test_error"]
            spread = f" ± {100 * std:.2f}" if std is not None else ""
            cells.append(f"{100 * entry['mean_test_error']:.2f}%{spread}")
            seeds.append(str(entry["n_seeds"]))
        gap = gap_of.get((dataset, size))
        if gap is None:
            cells.append("—")
        else:
            se = gap["gap_se_points"]
            cells.append(f"{gap['gap_points']:+.2f}" + (f" ± {se:.2f}" if se is not None else ""))
        lines.append(
            f"| {dataset} | {size:,} | {cells[0]} | {cells[1]} | {cells[2]} | {'/'.join(seeds)} |"
        )
    lines += _upright_table(rows) + _crisp_table(crisp)
    if gaps:
        lines += [
            "",
            "± after a test error: the standard deviation over seeds; after the gap: its "
            "standard error, sqrt(sd_h²/n_h + sd_c²/n_c).",
        ]
    standin = standin_datasets(rows)
    if standin:
        lines += [
            "",
            f"{', '.join(standin)}: the stand-in, built from MNIST by the Rot-MNIST "
            "protocol (not the published Rot-MNIST files).",
        ]
    lines += ["", time_line(rows)]
    if missing:
        lines.append(f"{len(missing)} planned runs not finished yet (e.g. {missing[0]}).")
    return "\n".join(lines) + "\n"


def _upright_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: the upright runs' rotated test error (none without such runs)."""
    upright = [r for r in rows if r["variant"] == "upright" and r["test_error"] is not None]
    if not upright:
        return []
    lines = ["", "| trained upright | model | rotated test error |", "|---|---|---:|"]
    for r in upright:
        lines.append(f"| {r['dataset']} | {r['model']} | {100 * r['test_error']:.2f}% |")
    return lines


def _crisp_table(crisp: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: each run's accuracy on crisp inputs (none without crisp rows)."""
    if not crisp:
        return []
    lines = [
        "",
        "| crisp inputs (accuracy) | model | size | seed | rotated test | original "
        "| 90° | 180° | 270° |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in crisp:
        cells = " | ".join(
            f"{100 * r[k]:.2f}%"
            for k in ("rotated", "crisp_0", "crisp_90", "crisp_180", "crisp_270")
        )
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['train_size']:,} | {r['seed']} | {cells} |"
        )
    return lines
