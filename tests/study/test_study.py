"""``hnets study``: plan, length rule, stratified subsets, --quick, --plan then --collect."""

from __future__ import annotations

import csv
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hnets.cli import main
from hnets.data.subsets import stratified_subset
from hnets.errors import DataError, HNetsError
from hnets.study import RESULT_FIELDS, StudyConfig, plan_study

from ..conftest import FASHION_SOURCE as FASHION
from ..conftest import MNIST_SOURCE, one_error_line


def test_the_plan_covers_the_grid_and_names_every_run() -> None:
    runs = plan_study(StudyConfig())
    grid = [r for r in runs if r.variant != "upright"]
    assert len(grid) == 2 * 4 * 3 * 2  # datasets x sizes x seeds x models
    assert {r.variant for r in grid} == {"standin", "rotated"}
    assert len({r.name for r in runs}) == len(runs)
    full = [r for r in grid if r.train_size == 12_000]
    assert all(r.full and r.epochs == 90 for r in full)
    assert "--train-split train+valid" in " ".join(full[0].argv(Path("R")))
    upright = [r for r in runs if r.variant == "upright"]
    assert [(r.dataset, r.model) for r in upright] == [
        ("rotmnist", "hnet"),
        ("rotmnist", "cnn"),
        ("rotfashion", "hnet"),
        ("rotfashion", "cnn"),
    ]
    assert all(not r.augment and r.width == 1.0 for r in upright)
    # the recipe's eval_blur on every rotated run, none on the upright (crisp) ones
    assert all("--eval-blur 0.5 " in " ".join(r.argv(Path("R"))) for r in grid)
    assert all("--eval-blur 0 " in " ".join(r.argv(Path("R"))) for r in upright)


def test_small_sizes_train_for_the_same_number_of_steps() -> None:
    config = StudyConfig()
    for size in (1_000, 2_000, 5_000):
        epochs = config.epochs_for(size)
        steps_per_epoch = -(-size // 64)
        assert epochs * steps_per_epoch >= 8_000 > (epochs - 1) * steps_per_epoch
    assert [config.epochs_for(n) for n in (1_000, 2_000, 5_000)] == [500, 250, 102]
    assert config.epochs_for(12_000) == 90


def test_small_runs_validate_about_a_hundred_times() -> None:
    config = StudyConfig()
    runs = {(r.variant, r.train_size): r for r in plan_study(config) if r.seed == 0}
    assert [runs["standin", n].valid_every for n in (1_000, 2_000, 5_000)] == [5, 2, 1]
    assert runs["standin", 12_000].valid_every == 1 and runs["upright", 10_000].valid_every == 1
    assert "--valid-every 5 " in " ".join(runs["standin", 1_000].argv(Path("R")))
    assert "--valid-every" not in " ".join(runs["standin", 5_000].argv(Path("R")))
    with pytest.raises(HNetsError):
        StudyConfig(validations=0).check()


def test_the_help_states_the_default_step_budget(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert f"(default {StudyConfig().small_steps})" in " ".join(capsys.readouterr().out.split())


def test_bad_study_settings_are_one_line(capsys) -> None:
    for args in (
        ["study", "--datasets", "nope", "--plan"],
        ["study", "--models", "mlp", "--plan"],
        ["study", "--sizes", "20000", "--plan"],
    ):
        assert main(args) in (1, 2), args
        one_error_line(capsys)
    for args in (["study", "--seeds", "a,b", "--plan"], ["study", "--sizes", "1000,", "--plan"]):
        with pytest.raises(SystemExit) as info:  # argparse's type check, in the same format
            main(args)
        assert info.value.code == 2
        assert one_error_line(capsys).startswith("hnets: error: argument --s")


def test_stratified_subsets_keep_class_shares_and_follow_the_seed() -> None:
    labels = np.repeat(np.arange(10), [100, 200, 50, 50, 100, 100, 100, 100, 100, 100])
    chosen = stratified_subset(labels, 100, seed=3)
    counts = np.bincount(labels[chosen], minlength=10)
    assert chosen.size == 100 and np.unique(chosen).size == 100
    assert counts.tolist() == [10, 20, 5, 5, 10, 10, 10, 10, 10, 10]
    assert np.array_equal(chosen, stratified_subset(labels, 100, seed=3))
    assert not np.array_equal(chosen, stratified_subset(labels, 100, seed=4))
    odd = np.bincount(labels[stratified_subset(labels, 7, seed=0)], minlength=10)
    assert odd.sum() == 7 and odd.max() <= 2  # remainders go to the largest fractions
    with pytest.raises(DataError):
        stratified_subset(labels, 0, seed=0)


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path: Path, data_env: Path, monkeypatch, capsys) -> None:
    """--quick trains, skips what finished, and writes every table and figure."""
    if (FASHION / "train-images-idx3-ubyte.gz").is_file():
        monkeypatch.setenv("HNETS_FASHION_DIR", str(FASHION.resolve()))
        datasets = "rotmnist,rotfashion"
    else:
        datasets = "rotmnist"
    # a data directory of its own (the session's stand-in linked in), where the upright
    # variants are built from the idx files when missing
    data = tmp_path / "data"
    data.mkdir()
    (data / "rotmnist-standin").symlink_to(data_env / "rotmnist-standin")
    monkeypatch.setenv("HNETS_DATA", str(data))
    mnist = MNIST_SOURCE
    monkeypatch.setenv("HNETS_MNIST_DIR", str(mnist.resolve()))
    runs, out = tmp_path / "runs", tmp_path / "study"
    args = ["study", "--quick", "--datasets", datasets, "--runs", str(runs), "--out", str(out)]
    assert main([*args, "--seeds", "0", "--sizes", "100"]) == 0
    table = capsys.readouterr().out
    assert "| rotmnist | 100 |" in table and "trained upright" in table
    names = {p.name for p in out.iterdir()}
    assert {"results.csv", "summary.csv", "results.md", "error_vs_size.png", "upright"} <= names
    assert (out / "upright" / "rotmnist" / "robustness.png").is_file()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert tuple(rows[0]) == RESULT_FIELDS
    n_datasets = len(datasets.split(","))
    assert len(rows) == n_datasets * 4  # 1 size x 1 seed x 2 models + 2 upright runs
    for row in rows:
        assert 0.0 <= float(row["test_error"]) <= 1.0 and int(row["params"]) > 1000
        assert row["threads"] == str(torch.get_num_threads())  # the core time is known
    assert "core-hours for the" in table
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["n_seeds"] for r in summary} == {"1"} and len(summary) == n_datasets * 2
    gaps = list(csv.DictReader((out / "gap.csv").open()))
    assert len(gaps) == n_datasets and {g["gap_se_points"] for g in gaps} == {""}
    by_model = {(r["dataset"], r["model"]): float(r["mean_test_error"]) for r in summary}
    for g in gaps:
        expected = 100 * (by_model[g["dataset"], "cnn"] - by_model[g["dataset"], "hnet"])
        assert float(g["gap_points"]) == pytest.approx(expected, abs=1e-3)
    crisp = list(csv.DictReader((out / "crisp.csv").open()))
    assert len(crisp) == n_datasets * 2 and {r["n"] for r in crisp} == {"200"}
    for row in crisp:
        assert all(0.0 <= float(row[k]) <= 1.0 for k in ("rotated", "crisp_0", "crisp_270"))
    hnet = next(r for r in crisp if r["model"] == "hnet")
    # the H-Net's logits are invariant to exact quarter turns: the same accuracy at all four
    quarter_turns = [float(hnet[f"crisp_{a}"]) for a in (0, 90, 180, 270)]
    assert max(quarter_turns) - min(quarter_turns) <= 1 / 200 + 1e-9  # a near-tie may flip
    assert "crisp inputs" in table
    # a second call trains nothing new (finished runs are skipped) and adds a seed
    stamp = {p: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    assert main([*args, "--seeds", "0,1", "--sizes", "100", "--no-upright"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["n_seeds"] for r in summary} == {"2"}
    assert all(float(r["std_test_error"]) >= 0.0 for r in summary)
    gaps = list(csv.DictReader((out / "gap.csv").open()))
    assert all(float(g["gap_se_points"]) >= 0.0 for g in gaps)
    # the run directories lost with a machine: the records under out/runs keep the study
    records = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert records == sorted(f"{p.parent.name}.json" for p in runs.glob("*/summary.json"))
    tables = {n: (out / n).read_text() for n in ("results.csv", "summary.csv", "crisp.csv")}
    shutil.rmtree(runs)
    again = [*args, "--seeds", "0,1", "--sizes", "100", "--no-upright"]
    assert main([*again, "--collect"]) == 0
    assert {n: (out / n).read_text() for n in tables} == tables
    assert main([*args, "--seeds", "0", "--sizes", "100", "--collect"]) == 0  # upright too
    assert "trained upright" in capsys.readouterr().out
    assert (out / "upright" / "rotmnist" / "robustness.png").is_file()  # kept, not redrawn
    assert main([*again, "--status"]) == 0
    done = 2 * 2 * n_datasets  # seeds x models, the upright runs left out
    assert f"{done} done, 0 partial, 0 not started" in capsys.readouterr().out
    assert main(again) == 0  # trains nothing again
    assert not runs.exists()
    assert {n: (out / n).read_text() for n in tables} == tables


def _write_record(out: Path, run, **changes) -> Path:  # noqa: ANN001
    import json
    from dataclasses import replace

    path = out / "runs" / f"{run.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {k: None for k in RESULT_FIELDS} | {
        "dataset": run.dataset, "variant": run.variant, "model": run.model,
        "train_size": run.train_size, "seed": run.seed, "test_error": 0.25, "wall_seconds": 1.0,
    }  # fmt: skip
    settings = replace(run, **changes).settings()
    path.write_text(json.dumps({"settings": settings, "result": result, "crisp": None}))
    return path


def test_a_record_counts_only_for_the_run_it_was_made_with(tmp_path: Path) -> None:
    from hnets.study import collect_study, read_records

    config = StudyConfig.quick_config(datasets=("rotmnist",), seeds=(0,), sizes=(100,))
    config = replace(config, upright=False)
    hnet, cnn = plan_study(config)
    _write_record(tmp_path, hnet)
    _write_record(tmp_path, cnn, epochs=cnn.epochs + 1)  # another length rule's run
    said: list[str] = []
    assert list(read_records([hnet, cnn], tmp_path, said.append)) == [hnet.name]
    assert len(said) == 1 and cnn.name in said[0] and "other settings" in said[0]
    result = collect_study(config, tmp_path / "no-runs", tmp_path, log=said.append)
    assert [r["model"] for r in result["rows"]] == ["hnet"] and result["missing"] == [cnn.name]
    assert "| rotmnist | 100 | 25.00% | — |" in result["markdown"]


def test_a_broken_record_is_one_error_naming_it(tmp_path: Path, capsys) -> None:
    run = plan_study(StudyConfig.quick_config(datasets=("rotmnist",)))[0]
    path = _write_record(tmp_path / "o", run)
    path.write_text('{"settings": {}}')
    args = ["study", "--quick", "--datasets", "rotmnist", "--runs", str(tmp_path / "r")]
    assert main([*args, "--out", str(tmp_path / "o"), "--collect"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "not a study record" in err[0]


@pytest.mark.slow
def test_plan_lines_run_by_hand_then_collect_give_the_same_tables(
    tmp_path: Path, data_env: Path, capsys
) -> None:
    grid = ["--quick", "--datasets", "rotmnist", "--models", "cnn", "--seeds", "0,1"]
    grid += ["--sizes", "100", "--no-upright"]
    tables = {}
    for how in ("study", "by-hand"):
        runs, out = tmp_path / how / "runs", tmp_path / how / "out"
        common = ["study", *grid, "--runs", str(runs), "--out", str(out)]
        if how == "study":
            assert main(common) == 0
        else:
            assert main([*common, "--plan"]) == 0
            lines = capsys.readouterr().out.splitlines()
            assert len(lines) == 2 and all(line.startswith("hnets train ") for line in lines)
            for line in lines:  # what a job array would run
                assert main(shlex.split(line)[1:]) == 0
            assert main([*common, "--collect"]) == 0
        capsys.readouterr()
        rows = list(csv.DictReader((out / "results.csv").open()))
        tables[how] = (
            [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows],
            (out / "summary.csv").read_text(),
        )
    assert tables["study"] == tables["by-hand"]


def test_the_time_line_counts_core_time_only_where_the_thread_count_is_known() -> None:
    from hnets.study.tables import time_line as _time_line

    rows = [
        {"wall_seconds": "3600", "threads": "2"},
        {"wall_seconds": "1800.0", "threads": 1},
        {"wall_seconds": "7200", "threads": ""},  # finished before threads were recorded
    ]
    assert _time_line(rows) == (
        "3 runs, 3.50 hours of wall time in all; 2.50 core-hours for the 2 with a "
        "recorded thread count."
    )
    assert _time_line(rows[2:]) == "1 runs, 2.00 hours of wall time in all."


def test_the_gap_is_cnn_minus_hnet_with_welchs_standard_error() -> None:
    from hnets.study.tables import gap_rows as _gaps
    from hnets.study.tables import markdown_report as _markdown

    def entry(dataset, model, size, mean, std, n):
        return {"dataset": dataset, "model": model, "train_size": size, "n_seeds": n,
                "mean_test_error": mean, "std_test_error": std}  # fmt: skip

    summary = [
        entry("rotmnist", "hnet", 1000, 0.020, 0.002, 3),
        entry("rotmnist", "cnn", 1000, 0.035, 0.004, 3),
        entry("rotmnist", "hnet", 12000, 0.013, None, 1),
        entry("rotmnist", "cnn", 12000, 0.011, 0.001, 2),
        entry("rotfashion", "cnn", 12000, 0.13, None, 1),  # no H-Net yet: no gap
    ]
    gaps = _gaps(summary)
    assert [(g["dataset"], g["train_size"]) for g in gaps] == [
        ("rotmnist", 1000),
        ("rotmnist", 12000),
    ]
    assert gaps[0]["gap_points"] == pytest.approx(1.5)
    # 100 * sqrt(0.002^2 / 3 + 0.004^2 / 3)
    assert gaps[0]["gap_se_points"] == pytest.approx(0.2582, abs=1e-4)
    assert (gaps[0]["hnet_seeds"], gaps[0]["cnn_seeds"]) == (3, 3)
    # the H-Net better is a positive gap; worse, negative; one seed: no standard error
    assert gaps[1]["gap_points"] == pytest.approx(-0.2)
    assert gaps[1]["gap_se_points"] is None
    table = _markdown([], summary, [], (), gaps)
    assert "| rotmnist | 1,000 | 2.00% ± 0.20 | 3.50% ± 0.40 | +1.50 ± 0.26 | 3/3 |" in table
    assert "| rotmnist | 12,000 | 1.30% | 1.10% ± 0.10 | -0.20 | 1/2 |" in table
    assert "| rotfashion | 12,000 | — | 13.00% | — | 1 |" in table
    assert "stand-in" not in table  # no run rows: nothing says which data they read
    rows = [{"dataset": "rotmnist", "variant": "standin", "model": "cnn", "train_size": 1000,
             "seed": 0, "epochs": 500, "params": 1, "valid_error": None, "test_error": 0.03,
             "wall_seconds": 1.0, "threads": 1}]  # fmt: skip
    assert "rotmnist: the stand-in, built from MNIST" in _markdown(rows, summary, [], (), gaps)


def test_the_figure_ticks_every_size_of_a_panel_and_names_the_stand_in() -> None:
    from hnets.study import StudyConfig
    from hnets.study.figures import error_vs_size_figure as _error_vs_size_figure
    from hnets.study.tables import gap_rows as _gaps

    def entry(dataset, model, size, mean):
        return {"dataset": dataset, "model": model, "train_size": size, "n_seeds": 1,
                "mean_test_error": mean, "std_test_error": None}  # fmt: skip

    summary = [
        entry("rotmnist", "hnet", 1000, 0.045),
        entry("rotmnist", "cnn", 1000, 0.045),
        entry("rotmnist", "cnn", 2000, 0.037),  # no H-Net at 2,000 yet: no gap there
        entry("rotmnist", "hnet", 12000, 0.013),
        entry("rotmnist", "cnn", 12000, 0.021),
        entry("rotfashion", "cnn", 12000, 0.13),
    ]
    config = StudyConfig(datasets=("rotmnist", "rotfashion"))
    fig = _error_vs_size_figure(summary, _gaps(summary), config, standin={"rotmnist"})
    (top_mnist, top_fashion), (bottom_mnist, bottom_fashion) = fig.axes[:2], fig.axes[2:]
    assert top_mnist.get_title() == "Rot-MNIST (stand-in)"
    assert "stand-in" not in top_fashion.get_title()
    assert [t.get_text() for t in bottom_mnist.get_xticklabels()] == ["1,000", "2,000", "12,000"]
    assert [t.get_text() for t in bottom_fashion.get_xticklabels()] == ["12,000"]


def test_collect_with_nothing_finished_says_so(tmp_path: Path, capsys) -> None:
    args = ["study", "--quick", "--datasets", "rotmnist", "--runs", str(tmp_path / "r")]
    assert main([*args, "--out", str(tmp_path / "o"), "--collect"]) == 0
    out = capsys.readouterr().out
    assert "0 runs" in out and "planned runs not finished yet" in out
    assert (tmp_path / "o" / "results.csv").read_text().strip() == ",".join(RESULT_FIELDS)


def test_a_failing_run_stops_the_study_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HNETS_DATA", str(tmp_path / "empty"))
    monkeypatch.delenv("HNETS_MNIST_DIR", raising=False)
    args = ["study", "--quick", "--datasets", "rotmnist", "--runs", str(tmp_path / "r")]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hnets: error: run rotmnist-standin-hnet-n100-s0 failed")
    assert not (tmp_path / "o").exists()


def test_study_errors_are_hnets_errors() -> None:
    with pytest.raises(HNetsError):
        StudyConfig(small_steps=0).check()


def test_protocol_originals_are_the_test_images_before_rotation(rotmnist_root: Path) -> None:
    import torch

    from hnets.data import RotMNIST, load_mnist, rotate_images
    from hnets.data.protocol import protocol_originals

    mnist = MNIST_SOURCE
    images, labels = protocol_originals(load_mnist(mnist), seed=0)
    test = RotMNIST(rotmnist_root, "test", limit=64)
    assert labels.shape == (50_000,) and labels[:64].tolist() == test.labels.tolist()
    turned = rotate_images(torch.from_numpy(images[:64]).unsqueeze(1), test.angles).clamp(0, 1)
    assert torch.equal(turned, test.images)  # the stored image is exactly this rotation


def test_status_says_where_each_run_stands_and_estimates_what_is_left(
    tmp_path: Path, capsys
) -> None:
    import json

    from hnets.study import study_status

    config = StudyConfig.quick_config(
        datasets=("rotmnist",), models=("hnet", "cnn"), sizes=(100,), seeds=(0, 1), upright=False
    )
    plan = {(r.model, r.seed): r for r in plan_study(config)}
    runs = tmp_path / "runs"

    def log(run, rows):
        (runs / run.name).mkdir(parents=True)
        lines = [json.dumps({"epoch": i + 1, **row}) for i, row in enumerate(rows)]
        (runs / run.name / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    finished, partial = plan["hnet", 0], plan["hnet", 1]
    log(finished, [{"train_n": 100, "seconds": 2.0}] * finished.epochs)
    (runs / finished.name / "summary.json").write_text("{}")
    log(partial, [{"train_n": 100, "seconds": 2.0}, {"train_n": 100, "seconds": 4.0}])
    with (runs / partial.name / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 3, "train_n": 1')  # torn by a kill: not counted
    status = study_status(config, runs)
    by_name = {r["name"]: r for r in status["runs"]}
    assert by_name[finished.name]["state"] == "done" and by_name[finished.name]["hours_left"] == 0
    row = by_name[partial.name]
    assert (row["state"], row["epochs_done"]) == ("partial", 2)
    # the median over every logged epoch of the model: 0.02 s per image
    assert status["seconds_per_image"] == {"hnet": pytest.approx(0.02)}
    assert row["hours_left"] == pytest.approx((partial.epochs - 2) * 100 * 0.02 / 3600)
    cnn = [r for r in status["runs"] if r["model"] == "cnn"]
    assert all(r["state"] == "not started" and r["hours_left"] is None for r in cnn)
    assert status["unestimated"] == 2
    assert status["hours_left"] == pytest.approx(row["hours_left"])
    # the command line prints the same, reading no data
    args = ["study", "--quick", "--datasets", "rotmnist", "--sizes", "100", "--seeds", "0,1"]
    assert main([*args, "--no-upright", "--runs", str(runs), "--status"]) == 0
    out = capsys.readouterr().out
    assert f"| {partial.name} | partial | 2/{partial.epochs} |" in out
    assert "1 done, 1 partial, 2 not started" in out and "2 runs not estimated" in out


def test_result_rows_round_the_test_error_that_training_computed_as_one_minus_accuracy():
    from hnets.study.tables import result_row as _result_row

    run = plan_study(StudyConfig.quick_config(datasets=("rotmnist",)))[0]
    summary = {"test_error": 1 - 0.95728, "valid_accuracy": 0.964, "wall_seconds": 12.34}
    assert summary["test_error"] != 0.04272  # what float subtraction leaves
    row = _result_row(run, summary)
    assert row["test_error"] == 0.04272 and row["valid_error"] == 0.036
    assert _result_row(run, {})["test_error"] is None  # a run without test figures


def test_upright_figures_are_evaluated_again_only_when_their_runs_change(
    tmp_path: Path, monkeypatch
) -> None:
    import hnets.analysis
    from hnets.study.collect import _upright_figures

    plan = [r for r in plan_study(StudyConfig(datasets=("rotmnist",))) if r.variant == "upright"]
    runs, out = tmp_path / "runs", tmp_path / "upright"
    calls: list[list[str]] = []

    def fake_study(done, *, out_dir, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append([Path(d).name for d in done])
        out_dir.mkdir(parents=True, exist_ok=True)
        files = hnets.analysis.robustness_files(out_dir)
        for f in files:
            f.write_text(str(len(calls)))
        return {"files": files}

    monkeypatch.setattr(hnets.analysis, "robustness_study", fake_study)
    first, second = (runs / r.name for r in plan)
    first.mkdir(parents=True)
    (first / "summary.json").write_text('{"test_accuracy": 0.5}')

    def collect(limit=None):  # noqa: ANN001, ANN202
        finished = {r.name for r in plan if (runs / r.name / "summary.json").is_file()}
        return _upright_figures(plan, runs, out, None, limit, finished)

    files = collect()
    assert calls == [[first.name]] and all(f.is_file() for f in files)
    assert collect() == files and len(calls) == 1  # nothing changed: reused
    second.mkdir()
    (second / "summary.json").write_text('{"test_accuracy": 0.6}')
    collect()
    assert calls[-1] == [first.name, second.name]  # a run finished since
    (first / "summary.json").write_text('{"test_accuracy": 0.7}')
    collect()
    assert len(calls) == 3  # a run was retrained
    collect(limit=100)
    assert len(calls) == 4  # other settings
    (out / "rotmnist" / "robustness.png").unlink()
    collect(limit=100)
    assert len(calls) == 5  # an output went missing


def test_plan_pending_leaves_out_runs_finished_or_recorded(tmp_path: Path, capsys) -> None:
    config = StudyConfig.quick_config(datasets=("rotmnist",), seeds=(0,), sizes=(100,))
    hnet, cnn = plan_study(replace(config, upright=False))
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = ["study", "--quick", "--datasets", "rotmnist", "--seeds", "0", "--sizes", "100"]
    args += ["--no-upright", "--runs", str(runs), "--out", str(out), "--plan"]

    def planned() -> list[str]:
        assert main([*args, "--pending"]) == 0
        return [line.split("--out ")[1].split()[0] for line in capsys.readouterr().out.splitlines()]

    assert planned() == [str(runs / hnet.name), str(runs / cnn.name)]
    _write_record(out, hnet)
    assert planned() == [str(runs / cnn.name)]
    (runs / cnn.name).mkdir(parents=True)
    (runs / cnn.name / "summary.json").write_text("{}")
    assert planned() == []
    assert main(args) == 0 and len(capsys.readouterr().out.splitlines()) == 2  # the whole plan
    assert main([*args[:-1], "--pending"]) == 1
    assert capsys.readouterr().err.strip() == "hnets: error: --pending goes with --plan"


def test_a_run_that_finishes_while_collect_works_waits_for_the_next_collect(
    tmp_path: Path, monkeypatch
) -> None:
    """Every table and record of one collect sees the same set of finished runs."""
    import json

    import hnets.study.collect
    from hnets.study import collect_study

    config = replace(
        StudyConfig.quick_config(datasets=("rotmnist",), seeds=(0,), sizes=(100,)), upright=False
    )
    hnet, cnn = plan_study(config)
    runs, out = tmp_path / "runs", tmp_path / "out"
    crisp = {"n": 10, "rotated": 0.9, "crisp_0": 0.9, "crisp_90": 0.9, "crisp_180": 0.9,
             "crisp_270": 0.9}  # fmt: skip
    for run in (hnet, cnn):  # crisp.json present: collect evaluates no model
        (runs / run.name).mkdir(parents=True)
        (runs / run.name / "crisp.json").write_text(json.dumps(crisp))
    summary = json.dumps({"test_error": 0.1, "wall_seconds": 1.0})
    (runs / hnet.name / "summary.json").write_text(summary)
    summarise = hnets.study.collect.summarise

    def cnn_finishes_meanwhile(rows):  # noqa: ANN001, ANN202
        (runs / cnn.name / "summary.json").write_text(summary)
        return summarise(rows)

    monkeypatch.setattr(hnets.study.collect, "summarise", cnn_finishes_meanwhile)
    result = collect_study(config, runs, out, log=lambda line: None)
    assert [r["model"] for r in result["rows"]] == ["hnet"] and result["missing"] == [cnn.name]
    crisp_rows = list(csv.DictReader((out / "crisp.csv").open()))
    assert [r["model"] for r in crisp_rows] == ["hnet"]
    assert [p.stem for p in (out / "runs").glob("*.json")] == [hnet.name]
    monkeypatch.setattr(hnets.study.collect, "summarise", summarise)
    result = collect_study(config, runs, out, log=lambda line: None)  # the next collect
    assert [r["model"] for r in result["rows"]] == ["hnet", "cnn"] and result["missing"] == []
    assert len(list(csv.DictReader((out / "crisp.csv").open()))) == 2
    assert len(list((out / "runs").glob("*.json"))) == 2


@pytest.mark.parametrize("quick", [False, True])
def test_the_printed_plan_is_what_runs(tmp_path: Path, quick: bool) -> None:
    """``--plan``'s lines, parsed by ``hnets train``, give the config the study trains with."""
    import argparse
    import dataclasses

    from hnets.cli import build_parser
    from hnets.cli.experiment import _CONFIG_FLAGS, _MODEL_OPTION_FLAGS
    from hnets.training import run_config

    config = StudyConfig.quick_config() if quick else StudyConfig()
    for run in plan_study(config):
        out = tmp_path / run.name
        args = build_parser().parse_args(run.argv(tmp_path, "/data"))
        given = {name: getattr(args, name) for name in _CONFIG_FLAGS if hasattr(args, name)}
        options = {o: getattr(args, d) for d, o in _MODEL_OPTION_FLAGS.items() if hasattr(args, d)}
        printed = run_config(out, {**given, "model_options": options}, resume=True)
        runs = run_config(out, run.train_settings("/data"), resume=True)
        assert dataclasses.asdict(printed.check()) == dataclasses.asdict(runs.check())
        assert isinstance(args, argparse.Namespace) and Path(args.out) == out and args.resume


@pytest.mark.parametrize("model", ["hnet", "cnn"])
def test_upright_runs_repeat_the_shipped_upright_models(model: str) -> None:
    import json

    from hnets.study import UPRIGHT_RECIPE

    shipped = Path(__file__).parents[2] / "src/hnets/pretrained" / f"{model}-upright/config.json"
    if not shipped.is_file():
        pytest.skip(f"{shipped} is not in this checkout")
    trained = json.loads(shipped.read_text())["extra"]["train_config"]
    (run,) = [r for r in plan_study(StudyConfig(datasets=("rotmnist",), models=(model,)))
              if r.variant == "upright"]  # fmt: skip
    assert run.train_settings()["data_variant"] == trained["data_variant"] == "upright"
    for key in ("train_split", "epochs", "augment"):
        assert trained[key] == UPRIGHT_RECIPE[key] == run.train_settings().get(key, True)
    assert trained.get("train_size") is None and trained["limit_train"] is None
    assert run.train_size == 10_000  # the whole train split: the same images as the shipped
    assert trained["model_options"].get("width", 1.0) == UPRIGHT_RECIPE["width"]
