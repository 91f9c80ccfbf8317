"""``hnets study --collect``: the tables, figures and records from the finished runs."""

from __future__ import annotations

from collections.abc import Container, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write, file_digest, read_json, save_figure, write_json
from ..errors import HNetsError
from ..training.rundir import SUMMARY_FILE
from .figures import error_vs_size_figure
from .plan import StudyConfig, StudyRun, plan_study
from .records import read_records, write_records
from .runs import default_runs_dir
from .tables import (
    CRISP_FIELDS,
    GAP_FIELDS,
    RESULT_FIELDS,
    SUMMARY_FIELDS,
    gap_rows,
    markdown_report,
    result_row,
    standin_datasets,
    summarise,
    write_csv,
)

__all__ = ["collect_study", "UPRIGHT_INPUTS"]

#: Degrees per bin of the upright runs' accuracy-by-angle figures.
_UPRIGHT_STEP = 30.0
#: Beside each upright figure: what it was computed from (reused while that holds).
UPRIGHT_INPUTS = "inputs.json"


def collect_study(
    config: StudyConfig,
    runs_dir: str | Path | None,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Build the tables and figures from the finished runs of the plan (see the module doc).

    Returns:
        ``{"rows", "summary", "gaps", "files", "markdown", "missing"}``: ``missing``
        names the planned runs without a summary yet.
    """
    runs_dir = default_runs_dir(config, data_dir) if runs_dir is None else Path(runs_dir)
    out_dir = Path(out_dir)
    plan = plan_study(config)
    recorded = read_records(plan, out_dir, log)
    # which runs have finished is read once, here: a run that finishes while collect
    # works (its crisp check takes minutes) waits for the next collect, instead of
    # showing up in some tables and records but not in others
    finished: dict[str, dict[str, Any]] = {}  # run name -> its results row
    rows, missing = [], []
    for run in plan:
        path = runs_dir / run.name / SUMMARY_FILE
        if path.is_file():
            finished[run.name] = result_row(run, read_json(path))
            rows.append(finished[run.name])
        elif run.name in recorded:
            rows.append(recorded[run.name]["result"])
        else:
            missing.append(run.name)
    summary = summarise([r for r in rows if r["variant"] != "upright"])
    gaps = gap_rows(summary)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [
        write_csv(out_dir / "results.csv", RESULT_FIELDS, rows),
        write_csv(out_dir / "summary.csv", SUMMARY_FIELDS, summary),
        write_csv(out_dir / "gap.csv", GAP_FIELDS, gaps),
    ]
    if summary:
        figure = error_vs_size_figure(summary, gaps, config, standin_datasets(rows))
        files.append(save_figure(figure, out_dir / "error_vs_size.png"))
    files += _upright_figures(
        plan, runs_dir, out_dir / "upright", data_dir, config.limit_eval, finished
    )
    crisp = _crisp_rows(plan, runs_dir, finished, data_dir, config.crisp_images, log, recorded)
    files.append(write_csv(out_dir / "crisp.csv", CRISP_FIELDS, crisp))
    files += write_records(plan, runs_dir, finished, out_dir)
    markdown = markdown_report(rows, summary, missing, crisp, gaps)
    with atomic_write(out_dir / "results.md", "w") as fh:
        fh.write(markdown)
    files.append(out_dir / "results.md")
    return {
        "rows": rows,
        "summary": summary,
        "gaps": gaps,
        "files": files,
        "markdown": markdown,
        "missing": missing,
    }


def _upright_figures(
    plan: Sequence[StudyRun],
    runs_dir: Path,
    out_dir: Path,
    data_dir: str | Path | None,
    limit: int | None,
    finished: Container[str],
) -> list[Path]:
    from ..analysis import robustness_files, robustness_study

    files: list[Path] = []
    for dataset in dict.fromkeys(r.dataset for r in plan if r.variant == "upright"):
        done = [
            runs_dir / r.name
            for r in plan
            if r.variant == "upright" and r.dataset == dataset and r.name in finished
        ]
        target = out_dir / dataset
        if not done:  # their run directories are gone (records only): keep what was drawn
            files += [p for p in robustness_files(target) if p.is_file()]
            continue
        # evaluating each model on the whole rotated test set takes minutes: done again
        # only when a run finished (or was retrained) since, or the settings changed
        inputs = {
            "runs": {d.name: file_digest(d / SUMMARY_FILE) for d in done},
            "step_degrees": _UPRIGHT_STEP,
            "limit": limit,
            "data_dir": None if data_dir is None else str(data_dir),
        }
        outputs = robustness_files(target)
        stamp = target / UPRIGHT_INPUTS
        if stamp.is_file() and read_json(stamp) == inputs and all(p.is_file() for p in outputs):
            files += outputs
            continue
        result = robustness_study(
            done,
            step_degrees=_UPRIGHT_STEP,
            limit=limit,
            data_dir=data_dir,
            variant="upright",
            out_dir=target,
            by_stored_angle=True,
        )
        write_json(stamp, inputs)
        files += result["files"]
    return files


def _crisp_rows(
    plan: Sequence[StudyRun],
    runs_dir: Path,
    finished: Container[str],
    data_dir: str | Path | None,
    n_images: int,
    log: Any = print,
    recorded: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Crisp-input accuracies of every finished rotated-data run (cached in ``crisp.json``;
    a run known only by its record: the record's)."""
    rows = []
    originals: dict[str, Any] = {}
    for run in plan:
        run_dir = runs_dir / run.name
        if run.variant == "upright":
            continue
        if run.name not in finished:
            record = (recorded or {}).get(run.name)
            if record is not None and record.get("crisp") is not None:
                rows.append(_crisp_row(run, record["crisp"]))
            continue
        cached = run_dir / "crisp.json"
        if not cached.is_file():
            if run.dataset not in originals:
                try:
                    originals[run.dataset] = _crisp_images(run, data_dir, n_images)
                except HNetsError as exc:  # no idx files here: say so, keep the rest
                    originals[run.dataset] = exc
            if isinstance(originals[run.dataset], HNetsError):
                log(f"crisp-input check skipped for {run.name}: {originals[run.dataset]}")
                continue
            write_json(cached, _crisp_of(run_dir, *originals[run.dataset]))
        rows.append(_crisp_row(run, read_json(cached)))
    return rows


def _crisp_row(run: StudyRun, result: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": run.dataset, "model": run.model, "train_size": run.train_size,
            "seed": run.seed, **result}  # fmt: skip


def _crisp_images(run: StudyRun, data_dir: str | Path | None, n: int) -> tuple[Any, Any, Any]:
    """The first ``n`` test images as stored, their unrotated originals, and the labels."""
    from ..analysis import protocol_originals_of
    from ..data import load_dataset

    test = load_dataset(run.dataset, "test", root=data_dir, variant=run.variant, limit=n)
    return protocol_originals_of(test), test.images, test.labels


def _crisp_of(run_dir: Path, originals: Any, rotated: Any, labels: Any) -> dict[str, Any]:
    from ..analysis import crisp_accuracy
    from ..checkpoint import load_model

    accuracies = crisp_accuracy(load_model(run_dir), originals, rotated, labels)
    return {"n": int(labels.shape[0]), **{k: round(v, 6) for k, v in accuracies.items()}}
