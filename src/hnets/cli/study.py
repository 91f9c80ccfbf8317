"""``hnets study``: argument parsing only (the study is :mod:`hnets.study`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from .._outputs import STUDY_OUT
from . import int_list

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``study`` command."""
    p = subparsers.add_parser(
        "study",
        help="seeds x training sizes x datasets, H-Net vs CNN: run, plan or collect",
        description=(
            "When does equivariance pay? Trains every run of the study that has not "
            "finished (each an ordinary `hnets train` run directory under --runs; an "
            "interrupted one resumes), then writes results.csv, summary.csv, figures and "
            "results.md into --out. --plan prints the runs as command lines instead (for a "
            "job array or GNU parallel); --collect only builds the tables from the runs "
            "that have finished; --status says where each run stands. A run recorded in "
            "--out/runs/ (written by every collect) counts as finished even when its "
            "directory is gone."
        ),
    )
    p.add_argument("--out", default=STUDY_OUT, help=f"tables and figures (default {STUDY_OUT})")
    p.add_argument(
        "--runs",
        metavar="DIR",
        help="run directories (default <data dir>/study-runs, or study-runs-quick)",
    )
    p.add_argument("--datasets", help="comma-separated (default rotmnist,rotfashion)")
    p.add_argument("--models", help="comma-separated (default hnet,cnn)")
    p.add_argument(
        "--sizes",
        type=int_list,
        help="training sizes, comma-separated (default 1000,2000,5000,12000)",
    )
    p.add_argument("--seeds", type=int_list, help="comma-separated (default 0,1,2)")
    p.add_argument(
        "--small-steps",
        type=int,
        help="optimizer steps of a run on fewer than 12,000 images (default 8000)",
    )
    p.add_argument(
        "--upright",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the upright-train / rotated-test runs (default on)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a minutes-long smoke version (tiny sizes and steps)"
    )
    p.add_argument("--data-dir", help="where data lives (default: $HNETS_DATA or ~/.cache/hnets)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true", help="print every run as an hnets command")
    mode.add_argument("--collect", action="store_true", help="tables and figures only")
    mode.add_argument(
        "--status",
        action="store_true",
        help="where each run stands and about how many process-hours are left (reads "
        "the run directories and --out's records only)",
    )
    p.add_argument(
        "--pending",
        action="store_true",
        help="with --plan: only the runs not finished yet (no summary in --runs, no record "
        "in --out/runs/)",
    )
    p.set_defaults(handler=_study)


def _study(args: argparse.Namespace) -> int:
    from ..study import (
        RECORDS_DIR,
        StudyConfig,
        collect_study,
        default_runs_dir,
        format_status,
        pending_runs,
        plan_study,
        run_study,
        study_status,
    )

    config = StudyConfig.quick_config() if args.quick else StudyConfig()
    overrides = {
        "datasets": _names(args.datasets),
        "models": _names(args.models),
        "sizes": None if args.sizes is None else tuple(args.sizes),
        "seeds": None if args.seeds is None else tuple(args.seeds),
        "small_steps": args.small_steps,
        "upright": args.upright,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None}).check()
    runs = Path(args.runs) if args.runs else default_runs_dir(config, args.data_dir)
    if args.pending and not args.plan:
        raise ValueError("--pending goes with --plan")
    if args.plan:
        plan = plan_study(config)
        for run in pending_runs(plan, runs, args.out) if args.pending else plan:
            print(shlex.join(["hnets", *run.argv(runs, args.data_dir)]))
        return 0
    if args.status:
        print(format_status(study_status(config, runs, args.out)), end="")
        return 0
    if not args.collect:
        run_study(
            config,
            runs,
            data_dir=args.data_dir,
            out_dir=args.out,
            log=lambda m: print(m, file=sys.stderr),
        )
    result = collect_study(
        config, runs, args.out, data_dir=args.data_dir, log=lambda m: print(m, file=sys.stderr)
    )
    print(result["markdown"], end="")
    records = Path(args.out) / RECORDS_DIR
    files = [str(p) for p in result["files"] if p.parent != records]
    n_records = len(result["files"]) - len(files)
    if n_records:
        files.append(f"{n_records} run record{'s' * (n_records != 1)} in {records}")
    print(f"wrote {', '.join(files)}", file=sys.stderr)
    return 0


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())
