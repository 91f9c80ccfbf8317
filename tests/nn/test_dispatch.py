"""Measured dispatch (impl="auto"): decisions by (fake) timing, their caches, equal results."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hnets._native import build
from hnets.models import HNetMNIST
from hnets.nn import HConv2d, dispatch

ROOT = Path(__file__).resolve().parents[2]
needs_compiler = pytest.mark.skipif(build._compiler() is None, reason="needs a C compiler")


@pytest.fixture
def tuning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Autotune on, a private cache, and a fake clock: ``times[name]`` seconds per scheme."""
    monkeypatch.setenv("HNETS_AUTOTUNE", "1")
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path / "cache"))
    dispatch.clear_memory()
    measured: list[str] = []
    times = {"dense": 3.0, "dense-nchw": 3.5, "gauss": 2.0, "karatsuba": 1.0}

    def fake_time(run, candidates):  # noqa: ANN001, ANN202
        for name in candidates:
            run(name)  # the candidate really runs (it must work), its time is ours
            measured.append(name)
        return {name: times[name] for name in candidates}

    monkeypatch.setattr(dispatch, "_time", fake_time)
    _busy(monkeypatch, 0.0)  # a quiet machine, whatever else runs beside the tests
    yield times, measured
    dispatch.clear_memory()


_REAL_PROBE = dispatch._LoadProbe.busy_elsewhere


def _busy(monkeypatch: pytest.MonkeyPatch, cpus: float | None) -> None:
    """Pretend other processes kept ``cpus`` CPUs busy during every measurement."""
    monkeypatch.setattr(dispatch._LoadProbe, "busy_elsewhere", lambda self: cpus)


def _input(conv: HConv2d, batch: int = 3, size: int = 12) -> torch.Tensor:
    return torch.randn(batch, conv.in_channels, conv.in_max_order + 1, 2, size, size)


def test_the_fastest_candidate_wins_and_is_remembered(tuning) -> None:
    times, measured = tuning
    conv = HConv2d(4, 4, 5, max_order=1)
    conv(_input(conv))
    assert sorted(measured) == ["dense", "dense-nchw", "gauss", "karatsuba"]
    key, choice = conv.last_choice
    assert choice == "karatsuba" and "train" in key and "b4 " in key  # batch 3 -> bucket 4
    conv(_input(conv))
    assert len(measured) == 4  # remembered in memory: not measured again
    entry = json.loads(dispatch.cache_path().read_text())["decisions"][key]
    assert entry["choice"] == "karatsuba" and entry["seconds"]["dense"] == 3.0
    dispatch.clear_memory()  # a new process: the file answers
    times["dense"] = 0.5
    conv(_input(conv))
    assert len(measured) == 4 and conv.last_choice[1] == "karatsuba"


def test_signatures_separate_training_inference_and_batch_buckets(tuning) -> None:
    times, measured = tuning
    conv = HConv2d(4, 4, 5, max_order=2)  # orders 0..2: no Karatsuba
    conv(_input(conv, batch=3))
    assert sorted(measured) == ["dense", "dense-nchw", "gauss"]
    with torch.no_grad():
        conv(_input(conv, batch=3))
    assert "infer" in conv.last_choice[0] and len(measured) == 6
    conv(_input(conv, batch=4))  # same bucket as 3
    assert len(measured) == 6
    conv(_input(conv, batch=5))  # bucket 8
    assert len(measured) == 9 and len(dispatch.decisions()) == 3


@pytest.mark.parametrize("winner", ["dense", "dense-nchw", "gauss", "karatsuba"])
def test_every_choice_gives_the_same_outputs_and_gradients(tuning, winner) -> None:
    times, _ = tuning
    for name in times:
        times[name] = 0.0 if name == winner else 1.0
    torch.manual_seed(0)
    auto = HConv2d(4, 6, 5, max_order=1)
    ref = HConv2d(4, 6, 5, max_order=1, impl="dense")
    ref.load_state_dict(auto.state_dict())
    z = _input(auto).requires_grad_()
    out = auto(z)
    assert auto.last_choice[1] == winner
    grads = torch.autograd.grad(out.square().sum(), [z, auto.weight])
    expected = ref(z)
    ref_grads = torch.autograd.grad(expected.square().sum(), [z, ref.weight])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert auto.weight.grad is None  # timing the candidates left no gradient behind


def test_the_fixed_table_is_used_without_measuring(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HNETS_AUTOTUNE", "0")
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dispatch, "_time", lambda *a: pytest.fail("measured with autotune off"))
    conv = HConv2d(8, 8, 5, max_order=1)
    conv(_input(conv))
    assert conv.last_choice is None and not list(tmp_path.iterdir())


def test_a_whole_model_tunes_and_the_report_names_every_layer(tuning) -> None:
    from hnets.bench import format_tuning, tune_model

    model = HNetMNIST(width=0.5)
    rows = tune_model(model, batch_size=4, eval_batch_size=8)
    convs = [n for n, m in model.named_modules() if isinstance(m, HConv2d)]
    assert len(rows) == 2 * (len(convs) - 1)  # the first layer reads real images directly
    assert {r["mode"] for r in rows} == {"train", "infer"}
    assert all(r["choice"] in r["seconds"] for r in rows)
    assert "features.3.conv" in format_tuning(rows)
    assert all(p.grad is None for p in model.parameters())


def test_a_decision_among_other_candidates_is_measured_again(tuning) -> None:
    """A cached decision made before a candidate existed does not hide the newcomer."""
    times, measured = tuning
    conv = HConv2d(4, 4, 5, max_order=1)
    conv(_input(conv))
    key = conv.last_choice[0]
    entry = dispatch.decisions()[key]
    del entry["seconds"]["dense-nchw"]  # as an older hnets wrote it
    dispatch._memory[key] = entry
    times["dense-nchw"] = 0.1
    conv(_input(conv))
    assert len(measured) == 8 and conv.last_choice[1] == "dense-nchw"


def test_a_cache_file_that_is_not_json_is_measured_again(tuning) -> None:
    _, measured = tuning
    path = dispatch.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{ not json")
    conv = HConv2d(4, 4, 5, max_order=1)
    conv(_input(conv))
    assert len(measured) == 4 and json.loads(path.read_text())["format"] == 1


def test_two_processes_tuning_at_once_leave_a_valid_file(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from hnets.nn import dispatch\n"
        "dispatch._time = lambda run, names: {'a': 1.0, 'b': 2.0}\n"
        "for i in range(40):\n"
        "    dispatch.choose(f'{sys.argv[1]}-{i}', ['a', 'b'], lambda name: None)\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "HNETS_CACHE_DIR": str(tmp_path), "PATH": ""}
    procs = [subprocess.Popen([sys.executable, "-c", script, tag], env=env) for tag in ("p", "q")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    (path,) = tmp_path.glob("autotune-*.json")
    entries = json.loads(path.read_text())["decisions"]
    assert entries and all(v["choice"] == "a" for v in entries.values())
    assert {k.split("-")[0] for k in entries} <= {"p", "q"}
    assert not list(tmp_path.glob("*.tmp*"))  # no temporary file left behind


def test_candidates_are_timed_interleaved_for_a_bounded_number_of_rounds(monkeypatch) -> None:
    calls: list[str] = []
    dispatch._time(calls.append, ["a", "b"])  # fast candidates: the budget runs every round
    assert calls[:2] == ["a", "b"]  # the untimed calls
    rounds = calls[2:]
    assert rounds == ["a", "b"] * (len(rounds) // 2)  # A, B, A, B, ...
    assert dispatch.MIN_ROUNDS <= len(rounds) // 2 <= dispatch.MAX_ROUNDS
    monkeypatch.setattr(dispatch, "BUDGET_S", 0.0)  # no time left: only the minimum
    calls.clear()
    dispatch._time(calls.append, ["a", "b", "c"])
    assert len(calls) == 3 * (1 + dispatch.MIN_ROUNDS)


@needs_compiler
@pytest.mark.parametrize(
    ("channels", "size", "expected"),
    [
        (32, 7, "karatsuba"),
        (32, 28, "karatsuba"),
        (16, 28, "gauss"),
        (16, 14, "gauss"),
        (8, 28, "dense"),
    ],  # fmt: skip
)
def test_the_fixed_table_of_hnets_autotune_0(channels, size, expected):
    conv = HConv2d(channels, channels, 5, max_order=1)
    images = torch.zeros(1, channels * 4, size, size).contiguous(memory_format=torch.channels_last)
    assert conv._choose_impl(images) == expected
    assert (
        HConv2d(channels, channels, 5, max_order=2)._choose_impl(
            torch.zeros(1, channels * 6, size, size).contiguous(memory_format=torch.channels_last)
        )
        != "karatsuba"
    )  # needs orders 0..1 on both sides


def test_the_load_probe_sees_another_process_keep_a_cpu_busy() -> None:
    quiet = dispatch._LoadProbe()
    assert quiet.busy_elsewhere() is not None  # Linux: /proc/stat answers
    spin = (
        "import time\nprint('go', flush=True)\n"
        "end = time.time() + 5\nwhile time.time() < end: pass\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "go"
        probe = dispatch._LoadProbe()
        time.sleep(0.6)  # this process idles; the child spins on one CPU
        busy = probe.busy_elsewhere()
    finally:
        proc.kill()
        proc.wait()
    assert busy is not None and 0.6 < busy < (os.cpu_count() or 1) + 0.5


def test_a_contended_decision_is_measured_again_by_the_next_process_only(
    tuning, monkeypatch
) -> None:
    times, measured = tuning
    free = max((os.cpu_count() or 1) - torch.get_num_threads(), 0)
    _busy(monkeypatch, free + dispatch.CONTENDED_CPUS + 0.1)
    conv = HConv2d(4, 4, 5, max_order=1)
    conv(_input(conv))
    key = conv.last_choice[0]
    entry = json.loads(dispatch.cache_path().read_text())["decisions"][key]
    assert entry["contended"] is True and entry["busy_elsewhere"] > free
    conv(_input(conv))
    assert len(measured) == 4  # this process measured it: final here, busy or not
    dispatch.clear_memory()  # the next process, on a quiet machine
    _busy(monkeypatch, free + dispatch.CONTENDED_CPUS - 0.1)
    times["gauss"] = 0.5
    conv(_input(conv))
    assert len(measured) == 8 and conv.last_choice[1] == "gauss"
    entry = json.loads(dispatch.cache_path().read_text())["decisions"][key]
    assert "contended" not in entry and entry["choice"] == "gauss"
    dispatch.clear_memory()  # a clean decision stays
    conv(_input(conv))
    assert len(measured) == 8


def test_without_proc_stat_decisions_are_kept_as_before(tuning, monkeypatch) -> None:
    _, measured = tuning
    monkeypatch.setattr(dispatch._LoadProbe, "busy_elsewhere", _REAL_PROBE)
    monkeypatch.setattr(dispatch, "_system_busy_seconds", lambda: None)
    conv = HConv2d(4, 4, 5, max_order=1)
    conv(_input(conv))
    entry = dispatch.decisions()[conv.last_choice[0]]
    assert "busy_elsewhere" not in entry and "contended" not in entry
    dispatch.clear_memory()
    conv(_input(conv))
    assert len(measured) == 4


def test_remeasuring_replaces_cached_decisions_once(tuning) -> None:
    times, measured = tuning
    conv = HConv2d(4, 4, 5, max_order=1)
    conv(_input(conv))
    times["dense"] = 0.1
    with dispatch.remeasuring():  # in the process that measured it first, too
        conv(_input(conv))
        conv(_input(conv))
    assert len(measured) == 8 and conv.last_choice[1] == "dense"
    conv(_input(conv))
    assert len(measured) == 8


def test_hnets_tune_again_and_the_report_flags_contended_layers(
    tuning, monkeypatch, capsys
) -> None:
    from hnets.cli import main

    _, measured = tuning
    args = ["tune", "--width", "0.5", "--batch-size", "4", "--eval-batch-size", "8"]
    _busy(monkeypatch, 99.0)
    assert main(args) == 0
    first = len(measured)
    out = capsys.readouterr().out
    layers = 2 * 6  # six harmonic layers after the first, training and inference
    assert out.count("(contended)") == layers
    assert f"{layers} of {layers} measured while other" in out
    _busy(monkeypatch, 0.0)
    assert main(args) == 0  # the same process measured them: kept
    assert len(measured) == first and "(contended)" in capsys.readouterr().out
    assert main([*args, "--again", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert len(measured) == 2 * first and not any(r["contended"] for r in rows)
    assert all(r["busy_elsewhere"] == 0.0 for r in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("training", [True, False])
def test_a_timed_call_on_the_gpu_waits_for_the_gpu(monkeypatch, training) -> None:
    # CUDA kernels run asynchronously: without a synchronize, a trial would time only
    # the launches, and the dispatch would pick the scheme that launches fastest
    conv = HConv2d(4, 4, 5, max_order=1).cuda().train(training)
    images, _ = conv._prepare(_input(conv).cuda())
    synced: list[torch.device] = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: (synced.append(d), real(d)))
    conv._trial(images, "dense", training)
    assert synced and synced[-1] == images.device


def test_measuring_is_announced_once_per_process(tuning, caplog) -> None:
    _, measured = tuning
    caplog.set_level(logging.INFO, logger="hnets")
    conv = HConv2d(4, 4, 5, max_order=1)
    conv(_input(conv))
    conv(_input(conv, batch=40))  # another signature: measured, not announced again
    assert len(measured) == 8
    notes = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(notes) == 1 and "timing the convolution schemes" in notes[0].getMessage()
    assert str(dispatch.cache_path()) in notes[0].getMessage()
    caplog.clear()
    conv(_input(conv))  # known: nothing measured, nothing said
    assert not [r for r in caplog.records if r.levelno == logging.INFO]


def test_the_command_line_shows_the_announcement_on_stderr(tuning, capsys) -> None:
    from hnets.cli import main

    args = ["tune", "--width", "0.5", "--batch-size", "4", "--eval-batch-size", "8"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("hnets: timing the convolution schemes") == 1
    assert f"cache: {dispatch.cache_path()} (" in err and " s)" in err  # and how long it took
    assert not logging.getLogger("hnets").handlers  # the command's handler is gone after it
    dispatch.clear_memory()  # as a new process: the cache file answers, nothing to say
    assert main(args) == 0
    assert "timing the convolution" not in capsys.readouterr().err
