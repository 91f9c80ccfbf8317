"""The study's run records: each finished run's row, crisp accuracies and settings.

Under ``<out>/runs/``, beside the tables (in git): a run whose directory is gone
but whose record matches the plan counts as finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import read_json, write_json
from ..errors import HNetsError
from .plan import StudyRun

__all__ = ["RECORDS_DIR", "read_records", "write_records"]

#: Under the study's output directory: one JSON record per finished run.
RECORDS_DIR = "runs"


def read_records(
    plan: Sequence[StudyRun], out_dir: str | Path, log: Any = None
) -> dict[str, dict[str, Any]]:
    """The records under ``out_dir/runs`` that belong to runs of ``plan``, by run name.

    A record counts only when its ``settings`` equal the planned run's (the same
    dataset, size, seed, epochs, ...): one left by another plan is ignored, and ``log``
    (when given) says so in one line. An unreadable record is an error naming it.
    """
    records_dir = Path(out_dir) / RECORDS_DIR
    found = {}
    for run in plan:
        path = records_dir / f"{run.name}.json"
        if not path.is_file():
            continue
        record = read_json(path)
        if not isinstance(record, dict) or not isinstance(record.get("result"), dict):
            raise HNetsError(f"{path}: not a study record (no 'result' table)")
        if record.get("settings") != run.settings():
            if log is not None:
                log(f"{path}: recorded with other settings than this plan's; not used")
            continue
        found[run.name] = record
    return found


def write_records(
    plan: Sequence[StudyRun], runs_dir: Path, finished: dict[str, dict[str, Any]], out_dir: Path
) -> list[Path]:
    """A record for each run of ``finished`` (run name -> results row); others keep theirs."""
    paths = []
    for run in plan:
        if run.name not in finished:
            continue
        crisp = runs_dir / run.name / "crisp.json"
        record = {
            "settings": run.settings(),
            "result": finished[run.name],
            "crisp": read_json(crisp) if crisp.is_file() else None,
        }
        path = out_dir / RECORDS_DIR / f"{run.name}.json"
        write_json(path, record)
        paths.append(path)
    return paths
