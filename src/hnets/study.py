"""When does equivariance pay? The seeds x sample sizes x datasets study, as ordinary runs.

A study is a list of :class:`StudyRun`; each one is an ordinary ``hnets train`` run
directory under ``runs_dir`` named ``<dataset>-<variant>-<model>-n<size>-s<seed>``
(:meth:`StudyRun.argv` is its exact command line). :func:`run_study` trains the
runs that have no ``summary.json`` yet (an interrupted one resumes from its
checkpoint), then :func:`collect_study` reads whatever runs have finished and writes:

* ``results.csv``: one row per run (``dataset, variant, model, train_size, seed,
  epochs, params, valid_error, test_error, wall_seconds, threads``; ``threads``: of
  the process that finished the run, empty for runs from before it was recorded);
* ``summary.csv``: mean and (sample) standard deviation of ``test_error`` per
  ``dataset, model, train_size``, with the number of seeds;
* ``gap.csv``: the CNN's mean test error minus the H-Net's, per ``dataset,
  train_size`` where both models have runs, in percentage points, with its standard
  error ``sqrt(s_h^2 / n_h + s_c^2 / n_c)`` (Welch's; empty below two seeds of either);
* ``error_vs_size.png``: test error against training-set size (log x), error bars
  one standard deviation, one panel per dataset, both models; below it the gap,
  error bars one standard error;
* ``upright/``: the upright-train / rotated-test study's accuracy by the test
  image's angle (:func:`hnets.studies.robustness_study` by stored angle), with an
  ``inputs.json`` saying what it was computed from: evaluated again only when an
  upright run finished or changed since (or the settings did);
* ``crisp.csv``: for every finished run on rotated data, accuracy on the first
  ``crisp_images`` test images as stored (rotated, bilinear) and on their unrotated
  originals turned by exact quarter turns (crisp inputs, as a user's own photo);
  computed once per run into its ``crisp.json``;
* ``results.md``: the same tables in Markdown (also returned, for printing);
* ``runs/<run name>.json``: each finished run's record (its row of ``results.csv``,
  its crisp-input accuracies, and the run's settings). The run directories hold
  checkpoints and live outside a work tree, so they can be lost with a machine; the
  records sit beside the tables (in git, for ``docs/study``), and a run whose
  directory is gone but whose record matches the plan counts as finished: collect
  reads the record, and ``hnets study`` and ``--status`` do not train it again.

Training length: the full size (train+valid, 12,000 images) uses the recipe's
epochs (no validation: the last epoch is kept). A smaller size trains on a seeded,
stratified subset of the train split for a fixed budget of ``small_steps``
optimizer steps (the epochs that make it up, rounded up), validates about
``validations`` times (every ``epochs // validations`` epochs and after the last),
and keeps its best validated epoch by accuracy on the 2,000 validation images; the
same rule for both models. The default 8,000 steps was chosen on validation (see
the README: 4,000 undertrained the CNN at 1,000 and 5,000 images, 16,000 gained
nothing at 1,000). The test split is read once per run, at its end.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Container, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import atomic_write, file_digest, read_json, save_figure, write_json
from .data.cache import resolve_data_dir
from .data.registry import DATASETS, get_dataset
from .errors import HNetsError
from .training.config import DEFAULT_EVAL_BLUR
from .training.rundir import METRICS_FILE, SUMMARY_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "StudyConfig",
    "StudyRun",
    "RESULT_FIELDS",
    "RECORDS_DIR",
    "plan_study",
    "run_study",
    "collect_study",
    "study_status",
    "format_status",
    "read_records",
    "pending_runs",
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
_SUMMARY_FIELDS = ("dataset", "model", "train_size", "n_seeds", "mean_test_error", "std_test_error")
_GAP_FIELDS = ("dataset", "train_size", "gap_points", "gap_se_points", "hnet_seeds", "cnn_seeds")
_CRISP_FIELDS = (
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
_UPRIGHT_EPOCHS = 20  # as the README's upright Rot-MNIST runs
_UPRIGHT_STEP = 30.0  # degrees per bin of the upright runs' accuracy-by-angle figures
#: Beside each upright figure: what it was computed from (reused while that holds).
UPRIGHT_INPUTS = "inputs.json"
#: Under the study's output directory: one JSON record per finished run.
RECORDS_DIR = "runs"


@dataclass(frozen=True)
class StudyRun:
    """One training run of the study: what to train, and for how long."""

    dataset: str
    variant: str
    model: str
    train_size: int
    seed: int
    epochs: int
    full: bool
    augment: bool = True
    width: float | None = None
    limit_eval: int | None = None
    eval_blur: float | None = None
    valid_every: int = 1

    @property
    def name(self) -> str:
        """The run directory's name."""
        return f"{self.dataset}-{self.variant}-{self.model}-n{self.train_size}-s{self.seed}"

    def settings(self) -> dict[str, Any]:
        """Every field, as a record stores it (a record is this run's only when they match)."""
        return asdict(self)

    def argv(self, runs_dir: Path, data_dir: str | Path | None = None) -> list[str]:
        """The ``hnets`` arguments that train this run (``--resume``: idempotent)."""
        args = ["train", "--dataset", self.dataset, "--variant", self.variant]
        args += ["--model", self.model, "--seed", str(self.seed), "--epochs", str(self.epochs)]
        if self.full:
            args += ["--train-split", "train+valid"]
        else:
            args += ["--train-split", "train", "--train-size", str(self.train_size)]
        if not self.augment:
            args.append("--no-augment")
        if self.width is not None:
            args += ["--width", f"{self.width:g}"]
        if self.eval_blur is not None:
            args += ["--eval-blur", f"{self.eval_blur:g}"]
        if self.valid_every > 1:
            args += ["--valid-every", str(self.valid_every)]
        if self.limit_eval is not None:
            args += ["--limit-eval", str(self.limit_eval)]
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]
        return [*args, "--out", str(runs_dir / self.name), "--resume", "--no-progress"]


@dataclass
class StudyConfig:
    """What the study covers.

    Attributes:
        datasets, models, sizes, seeds: the grid of the sample-efficiency study;
            ``full_size`` (12,000 = train+valid) is the recipe's run.
        upright: also train each model once on the upright variant (train split,
            no augmentation, width 1, 20 epochs) and test it on rotated images.
        recipe_epochs: epochs of a full-size run (the recipe's 90).
        small_steps: optimizer steps of a run on fewer images (see the module
            docstring); ``batch_size`` is the recipe's 64.
        validations: about how many times such a run validates (every
            ``epochs // validations`` epochs, and after the last): at 1,000 images
            validating all 500 epochs would cost about 40% of the run.
        limit_eval: score only the first N validation and test images (``--quick``).
        eval_blur: the rotated runs' ``--eval-blur`` (the recipe's; given explicitly so
            that runs begun before the option existed adopt it when they resume); the
            upright runs train on crisp images and use none.
        upright_size, upright_epochs: the upright runs' training size and length.
        crisp_images: how many test images the crisp-input check uses.
    """

    datasets: tuple[str, ...] = ("rotmnist", "rotfashion")
    models: tuple[str, ...] = ("hnet", "cnn")
    sizes: tuple[int, ...] = (1_000, 2_000, 5_000, 12_000)
    seeds: tuple[int, ...] = (0, 1, 2)
    upright: bool = True
    full_size: int = 12_000
    recipe_epochs: int = 90
    small_steps: int = 8_000
    validations: int = 100
    batch_size: int = 64
    limit_eval: int | None = None
    eval_blur: float = DEFAULT_EVAL_BLUR
    upright_size: int = 10_000
    upright_epochs: int = _UPRIGHT_EPOCHS
    crisp_images: int = 10_000
    quick: bool = field(default=False, repr=False)

    @classmethod
    def quick_config(cls, **overrides: Any) -> StudyConfig:
        """A minutes-long smoke version: tiny sizes, two seeds, a few steps, 200 test images."""
        base = cls(
            sizes=(100, 200),
            seeds=(0, 1),
            small_steps=6,
            limit_eval=200,
            upright_size=200,
            upright_epochs=1,
            crisp_images=200,
            quick=True,
        )
        return replace(base, **overrides)

    def check(self) -> StudyConfig:
        """Raise :class:`HNetsError` naming the first bad setting; return ``self``."""
        for name in self.datasets:
            get_dataset(name)  # one line listing the known datasets
        from .models import model_names

        for model in self.models:
            if model not in model_names():
                raise HNetsError(f"unknown model {model!r}: choose from {', '.join(model_names())}")
        for what, values in (("sizes", self.sizes), ("seeds", self.seeds)):
            if not values or any(v < (1 if what == "sizes" else 0) for v in values):
                raise HNetsError(f"--{what} needs values >= {1 if what == 'sizes' else 0}")
        if any(size > self.full_size for size in self.sizes):
            raise HNetsError(f"--sizes: at most {self.full_size} (train+valid)")
        if self.small_steps < 1:
            raise HNetsError("small_steps must be at least 1")
        if self.validations < 1:
            raise HNetsError("validations must be at least 1")
        return self

    def valid_every_for(self, size: int) -> int:
        """Epochs between validations: about ``validations`` per small run (at least 1)."""
        if size >= self.full_size:
            return 1  # train+valid: nothing to validate
        return max(1, self.epochs_for(size) // self.validations)

    def epochs_for(self, size: int) -> int:
        """The length rule: the recipe's epochs at full size, else ``small_steps`` steps."""
        if size >= self.full_size:
            return self.recipe_epochs
        return math.ceil(self.small_steps / math.ceil(size / self.batch_size))


def plan_study(config: StudyConfig) -> list[StudyRun]:
    """Every run of the study, in a fixed order (dataset, size, seed, model)."""
    config.check()
    runs = []
    for dataset in config.datasets:
        variant = _rotated_variant(dataset)
        for size in config.sizes:
            for seed in config.seeds:
                for model in config.models:
                    runs.append(
                        StudyRun(
                            dataset,
                            variant,
                            model,
                            size,
                            seed,
                            config.epochs_for(size),
                            full=size >= config.full_size,
                            limit_eval=config.limit_eval,
                            eval_blur=config.eval_blur,
                            valid_every=config.valid_every_for(size),
                        )
                    )
        if config.upright:
            for model in config.models:
                runs.append(
                    StudyRun(
                        dataset,
                        "upright",
                        model,
                        config.upright_size,
                        0,
                        config.upright_epochs,
                        full=False,
                        augment=False,
                        width=1.0,
                        limit_eval=config.limit_eval,
                        eval_blur=0.0,
                    )
                )
    return runs


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
    see :func:`read_records`) are skipped; an interrupted one resumes.
    Each goes through ``hnets train`` itself (:func:`hnets.cli.main`), so it is the run
    :meth:`StudyRun.argv` describes.
    """
    from .cli import main

    runs_dir = default_runs_dir(config, data_dir) if runs_dir is None else Path(runs_dir)
    trained = []
    plan = plan_study(config)
    pending = {r.name for r in pending_runs(plan, runs_dir, out_dir)}
    for i, run in enumerate(plan, 1):
        if run.name not in pending:
            continue
        log(f"[{i}/{len(plan)}] {run.name}")
        status = main(run.argv(runs_dir, data_dir))
        if status == 130:  # Ctrl-C: the run saved its checkpoint; the study stops with it
            raise KeyboardInterrupt
        if status != 0:
            raise HNetsError(f"run {run.name} failed (exit {status}); rerun to resume it")
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
            finished[run.name] = _result_row(run, read_json(path))
            rows.append(finished[run.name])
        elif run.name in recorded:
            rows.append(recorded[run.name]["result"])
        else:
            missing.append(run.name)
    summary = _summarise([r for r in rows if r["variant"] != "upright"])
    gaps = _gaps(summary)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [
        _write_csv(out_dir / "results.csv", RESULT_FIELDS, rows),
        _write_csv(out_dir / "summary.csv", _SUMMARY_FIELDS, summary),
        _write_csv(out_dir / "gap.csv", _GAP_FIELDS, gaps),
    ]
    if summary:
        figure = _error_vs_size_figure(summary, gaps, config, _standin_datasets(rows))
        files.append(save_figure(figure, out_dir / "error_vs_size.png"))
    files += _upright_figures(
        plan, runs_dir, out_dir / "upright", data_dir, config.limit_eval, finished
    )
    crisp = _crisp_rows(plan, runs_dir, finished, data_dir, config.crisp_images, log, recorded)
    files.append(_write_csv(out_dir / "crisp.csv", _CRISP_FIELDS, crisp))
    files += _write_records(plan, runs_dir, finished, out_dir)
    markdown = _markdown(rows, summary, missing, crisp, gaps)
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


def _rotated_variant(dataset: str) -> str:
    from .data.mnist import rotated_variant

    return rotated_variant(DATASETS[dataset])


def _result_row(run: StudyRun, summary: dict[str, Any]) -> dict[str, Any]:
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


def _time_line(rows: Sequence[dict[str, Any]]) -> str:
    """Wall time in all, and core time (wall x threads) where the thread count is known."""
    hours = sum(float(r["wall_seconds"]) for r in rows) / 3600
    known = [r for r in rows if r.get("threads") not in (None, "")]
    line = f"{len(rows)} runs, {hours:.2f} hours of wall time in all"
    if known:
        core = sum(float(r["wall_seconds"]) * int(r["threads"]) for r in known) / 3600
        line += f"; {core:.2f} core-hours for the {len(known)} with a recorded thread count"
    return line + "."


def _summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
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


def _gaps(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
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


def _write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> Path:
    with atomic_write(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in fields})
    return path


def _standin_datasets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The datasets whose runs read a stand-in (which figures and tables must say)."""
    return sorted({r["dataset"] for r in rows if r["variant"] == "standin"})


def _error_vs_size_figure(
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
            ax = axes[1][column]
            points = sorted(
                (g["train_size"], g["gap_points"], g["gap_se_points"] or 0.0)
                for g in gaps
                if g["dataset"] == dataset
            )
            ax.axhline(0.0, color="0.5", linewidth=0.8)
            if points:
                sizes, gap, se = zip(*points, strict=True)
                ax.errorbar(sizes, gap, yerr=se, marker="o", capsize=3, color="C2")
            ax.set_xscale("log")
            ax.set_ylabel("CNN − H-Net (points), ± 1 se")
            ax.grid(alpha=0.3, which="both")
        ax = axes[rows - 1][column]  # after every set_xscale (which resets the ticks)
        ax.set_xticks(panel_sizes, labels=[f"{n:,}" for n in panel_sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("training images")
    return fig


def _upright_figures(
    plan: Sequence[StudyRun],
    runs_dir: Path,
    out_dir: Path,
    data_dir: str | Path | None,
    limit: int | None,
    finished: Container[str],
) -> list[Path]:
    from .analysis import robustness_files, robustness_study

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


def _write_records(
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


def _crisp_images(run: StudyRun, data_dir: str | Path | None, n: int) -> tuple[Any, Any, Any]:
    """The first ``n`` test images as stored, their unrotated originals, and the labels."""
    from .analysis import protocol_originals_of
    from .data import load_dataset

    test = load_dataset(run.dataset, "test", root=data_dir, variant=run.variant, limit=n)
    return protocol_originals_of(test), test.images, test.labels


def _crisp_of(run_dir: Path, originals: Any, rotated: Any, labels: Any) -> dict[str, Any]:
    from .analysis import crisp_accuracy
    from .checkpoint import load_model

    accuracies = crisp_accuracy(load_model(run_dir), originals, rotated, labels)
    return {"n": int(labels.shape[0]), **{k: round(v, 6) for k, v in accuracies.items()}}


def _markdown(
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
    upright = [r for r in rows if r["variant"] == "upright" and r["test_error"] is not None]
    if upright:
        lines += ["", "| trained upright | model | rotated test error |", "|---|---|---:|"]
        for r in upright:
            lines.append(f"| {r['dataset']} | {r['model']} | {100 * r['test_error']:.2f}% |")
    if crisp:
        lines += [
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
    if gaps:
        lines += [
            "",
            "± after a test error: the standard deviation over seeds; after the gap: its "
            "standard error, sqrt(sd_h²/n_h + sd_c²/n_c).",
        ]
    standin = _standin_datasets(rows)
    if standin:
        lines += [
            "",
            f"{', '.join(standin)}: the stand-in, built from MNIST by the Rot-MNIST "
            "protocol (not the published Rot-MNIST files).",
        ]
    lines += ["", _time_line(rows)]
    if missing:
        lines.append(f"{len(missing)} planned runs not finished yet (e.g. {missing[0]}).")
    return "\n".join(lines) + "\n"
