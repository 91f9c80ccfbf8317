"""Training the study's runs, and where each one stands."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.cache import resolve_data_dir
from ..errors import HNetsError
from ..training.rundir import METRICS_FILE, SUMMARY_FILE
from .plan import StudyConfig, StudyRun, plan_study
from .records import read_records

__all__ = ["run_study", "pending_runs", "default_runs_dir", "study_status", "format_status"]


def run_study(
    config: StudyConfig,
    runs_dir: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    log: Any = print,
) -> list[StudyRun]:
    """Train every run of the plan that has not finished; return the runs trained now.

    Finished runs (``summary.json`` present, or a matching record under ``out_dir``:
    see :func:`~hnets.study.records.read_records`) are skipped; an interrupted one
    resumes. Each is trained by :func:`hnets.training.train` with the settings of
    :meth:`StudyRun.train_settings` (:func:`hnets.training.run_config`): the run that
    :meth:`StudyRun.argv` prints.

    Raises:
        HNetsError: a run failed (named, with the first line of why); the runs
            before it are kept and a rerun resumes it.
        KeyboardInterrupt: after Ctrl-C, once the run saved its checkpoint.
    """
    from ..training import run_config, train

    runs_dir = default_runs_dir(config, data_dir) if runs_dir is None else Path(runs_dir)
    trained = []
    plan = plan_study(config)
    pending = {r.name for r in pending_runs(plan, runs_dir, out_dir)}
    for i, run in enumerate(plan, 1):
        if run.name not in pending:
            continue
        log(f"[{i}/{len(plan)}] {run.name}")
        out = runs_dir / run.name
        try:
            config_ = run_config(out, run.train_settings(data_dir), resume=True)
            train(config_, out, resume=True, progress=False)
        except (HNetsError, OSError, ValueError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HNetsError(f"run {run.name} failed: {why}; rerun to resume it") from exc
        trained.append(run)
    return trained


def pending_runs(
    plan: Sequence[StudyRun], runs_dir: Path, out_dir: str | Path | None = None
) -> list[StudyRun]:
    """The runs of ``plan`` not finished: no ``summary.json`` under ``runs_dir`` and no
    matching record under ``out_dir`` (when given)."""
    recorded = read_records(plan, out_dir) if out_dir is not None else {}
    return [
        r
        for r in plan
        if r.name not in recorded and not (runs_dir / r.name / SUMMARY_FILE).is_file()
    ]


def default_runs_dir(config: StudyConfig, data_dir: str | Path | None = None) -> Path:
    """``<data dir>/study-runs`` (``study-runs-quick`` for ``--quick``): outside a work tree."""
    return resolve_data_dir(data_dir) / ("study-runs-quick" if config.quick else "study-runs")


def study_status(
    config: StudyConfig,
    runs_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Where each planned run stands, and about how much compute is left.

    Reads only the run directories' ``summary.json`` and ``metrics.jsonl`` and the
    records under ``out_dir`` (no data, no model). A run is ``done`` (a summary, or a
    matching record: see :func:`read_records`), ``partial`` (epochs logged, no summary)
    or ``not started``. The time left is an estimate at the speeds measured so far: per
    model, the median wall seconds per training image over every epoch logged by any
    run of the plan (validation included where that epoch validated), times the
    images each run still has to train on. Runs of a model with no epoch logged yet
    get no estimate.

    Returns:
        ``{"runs": [...], "seconds_per_image": {model: s}, "hours_left": h,
        "unestimated": n}``; each run is ``{"name", "model", "state", "epochs_done",
        "epochs", "hours_left"}`` (``hours_left`` ``None`` where unknown).
    """
    runs_dir = default_runs_dir(config) if runs_dir is None else Path(runs_dir)
    plan = plan_study(config)
    pending = {r.name for r in pending_runs(plan, runs_dir, out_dir)}
    logged: dict[str, list[dict[str, Any]]] = {}
    per_image: dict[str, list[float]] = {}
    for run in plan:
        rows = _epoch_rows(runs_dir / run.name / METRICS_FILE)
        logged[run.name] = rows
        for row in rows:
            if row.get("train_n") and row.get("seconds"):
                per_image.setdefault(run.model, []).append(row["seconds"] / row["train_n"])
    speed = {model: statistics.median(v) for model, v in per_image.items()}
    out, hours, unestimated = [], 0.0, 0
    for run in plan:
        rows = logged[run.name]
        done = run.name not in pending
        epochs_done = run.epochs if done else len(rows)
        left = None
        if done:
            left = 0.0
        elif run.model in speed:
            images = (rows[-1].get("train_n") if rows else None) or run.train_size
            left = (run.epochs - epochs_done) * images * speed[run.model] / 3600
        if left is None:
            unestimated += 1
        else:
            hours += left
        state = "done" if done else "partial" if rows else "not started"
        out.append(
            {
                "name": run.name,
                "model": run.model,
                "state": state,
                "epochs_done": epochs_done,
                "epochs": run.epochs,
                "hours_left": left,
            }
        )
    return {
        "runs": out,
        "seconds_per_image": speed,
        "hours_left": hours,
        "unestimated": unestimated,
    }


def format_status(status: dict[str, Any]) -> str:
    """:func:`study_status` as a table and a closing line."""
    lines = ["| run | state | epochs | hours left |", "|---|---|---:|---:|"]
    for r in status["runs"]:
        hours = "?" if r["hours_left"] is None else f"{r['hours_left']:.2f}"
        lines.append(f"| {r['name']} | {r['state']} | {r['epochs_done']}/{r['epochs']} | {hours} |")
    counts = {state: 0 for state in ("done", "partial", "not started")}
    for r in status["runs"]:
        counts[r["state"]] += 1
    speeds = ", ".join(
        f"{model} {1e3 * s:.2f} ms per training image"
        for model, s in sorted(status["seconds_per_image"].items())
    )
    summary = (
        f"{counts['done']} done, {counts['partial']} partial, {counts['not started']} not "
        f"started; about {status['hours_left']:.1f} process-hours left at the speeds "
        f"measured so far ({speeds or 'none yet'})"
    )
    if status["unestimated"]:
        summary += f", {status['unestimated']} runs not estimated (no epoch of their model yet)"
    return "\n".join([*lines, "", summary + "."]) + "\n"


def _epoch_rows(path: Path) -> list[dict[str, Any]]:
    """The epoch rows of a ``metrics.jsonl`` (none when missing; a torn last line skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows
