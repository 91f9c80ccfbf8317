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
    """Autotune on, a private cache, and a fake clock: ``times[name]`` seconds per scheme.

    ``measured`` lists the candidates timed: once per decision in training (separate
    calls), once per real call in inference (on the job).
    """
    monkeypatch.setenv("HNETS_AUTOTUNE", "1")
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path / "cache"))
    dispatch.clear_memory()
    measured: list[str] = []
    # within dispatch.DROP_RATIO of each other: no candidate drops out early
    times = {"dense": 1.2, "dense-nchw": 1.22, "gauss": 1.1, "karatsuba": 1.0}

    def fake_time(run, candidates):  # noqa: ANN001, ANN202
        trial = dispatch._Trial(candidates)
        for name in candidates:
            run(name)  # the candidate really runs (it must work), its time is ours
            measured.append(name)
            trial.record(name, 0.0)  # its untimed call
        for name in candidates:
            trial.record(name, times[name])
        return trial

    def fake_elapsed(ticket):  # noqa: ANN001, ANN202 - an inference call timed on the job
        measured.append(ticket.name)
        return times[ticket.name]

    monkeypatch.setattr(dispatch, "_time", fake_time)
    monkeypatch.setattr(dispatch, "_elapsed", fake_elapsed)
    _busy(monkeypatch, 0.0)  # a quiet machine, whatever else runs beside the tests
    yield times, measured
    dispatch.clear_memory()


_REAL_PROBE = dispatch._LoadProbe.busy_elsewhere
_REAL_ELAPSED = dispatch._elapsed


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
    assert entry["choice"] == "karatsuba" and entry["seconds"]["dense"] == 1.2
    dispatch.clear_memory()  # a new process: the file answers
    times["dense"] = 0.5
    conv(_input(conv))
    assert len(measured) == 4 and conv.last_choice[1] == "karatsuba"


def _infer_until_decided(module: torch.nn.Module, z: torch.Tensor) -> int:
    """Inference calls of ``module`` on ``z`` until no trial is open; how many it took."""
    with torch.no_grad():
        for calls in range(1, 100):
            module(z)
            if not dispatch.open_trials():
                return calls
    raise AssertionError("the on-the-job trial never decided")


def test_signatures_separate_training_inference_and_batch_buckets(tuning) -> None:
    times, measured = tuning
    conv = HConv2d(4, 4, 5, max_order=2)  # orders 0..2: no Karatsuba
    conv(_input(conv, batch=3))
    assert sorted(measured) == ["dense", "dense-nchw", "gauss"]
    calls = _infer_until_decided(conv, _input(conv, batch=3))
    assert "infer" in conv.last_choice[0] and len(dispatch.decisions()) == 2
    assert calls == 3 * (1 + dispatch.MIN_ROUNDS)  # fake times of seconds: over budget
    before = len(measured)
    assert _infer_until_decided(conv, _input(conv, batch=4)) == 1  # same bucket as 3
    assert len(measured) == before
    _infer_until_decided(conv, _input(conv, batch=5))  # bucket 8
    assert len(measured) > before and len(dispatch.decisions()) == 3


def test_inference_measures_on_the_job_in_interleaved_rounds(tuning) -> None:
    times, measured = tuning
    conv = HConv2d(4, 4, 5, max_order=1)
    torch.manual_seed(0)
    z = _input(conv)
    ref = HConv2d(4, 4, 5, max_order=1, impl="dense")
    ref.load_state_dict(conv.state_dict())
    expected = ref(z)
    run: list[str] = []
    with torch.no_grad():
        while True:
            out = conv(z)  # every call of the trial is a real one: its output counts
            run.append(conv.last_choice[1])
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
            if not dispatch.open_trials():
                break
    candidates = ["dense", "dense-nchw", "gauss", "karatsuba"]
    assert run == candidates * (1 + dispatch.MIN_ROUNDS)  # round robin, first calls untimed
    assert measured[: len(candidates)] == candidates  # the untimed calls ended too
    key = conv.last_choice[0]
    entry = json.loads(dispatch.cache_path().read_text())["decisions"][key]
    assert entry["choice"] == "karatsuba" and entry["seconds"] == times
    assert entry["busy_elsewhere"] == 0.0 and "contended" not in entry
    with torch.no_grad():
        conv(z)
    assert conv.last_choice[1] == "karatsuba" and len(run) == len(measured)


def test_a_trial_keeps_each_schemes_filters_and_the_decision_only_the_winners(tuning) -> None:
    conv = HConv2d(4, 4, 5, max_order=1).eval()
    z = _input(conv)
    with torch.no_grad():
        for _ in range(4):  # every scheme's untimed call: its filters synthesised once
            conv(z)
        assert sorted(conv._cache) == ["dense", "dense-nchw", "gauss", "karatsuba"]
        cached = conv._cache["gauss"][1]
        _infer_until_decided(conv, z)
        assert conv._cache["gauss"][1] is cached  # reused, not synthesised per call
        conv(z)  # decided: the other schemes' filters are dropped
    assert list(conv._cache) == ["karatsuba"]


def test_fast_calls_are_timed_until_the_budget_or_max_rounds(tuning) -> None:
    times, _ = tuning
    times.update({k: dispatch.BUDGET_S / 100 for k in times})  # far below the budget
    conv = HConv2d(4, 4, 5, max_order=1)
    calls = _infer_until_decided(conv, _input(conv))
    assert calls == 4 * (1 + dispatch.MAX_ROUNDS)
    times.update({k: dispatch.BUDGET_S / 18 for k in times})  # 5 rounds of 4 reach it
    conv = HConv2d(4, 4, 5, max_order=1)
    calls = _infer_until_decided(conv, _input(conv, batch=9))
    assert calls == 4 * (1 + 5)


def test_a_call_that_fails_goes_untimed_and_its_candidate_runs_again(tuning, monkeypatch) -> None:
    from hnets.nn import HBatchNorm, HBlock, HNonLinearity
    from hnets.nn import block as block_module

    times, measured = tuning
    conv = HConv2d(4, 4, 5, max_order=1)
    block = HBlock(conv, HNonLinearity(4, 1), HBatchNorm(4, 1)).eval()
    z = _input(conv)
    with torch.no_grad():
        block(z)  # dense: its untimed call
    real = block_module.HF.batch_norm_magnitude_relu

    def fail(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - after the scheme was chosen
        raise RuntimeError("out of memory")

    monkeypatch.setattr(block_module.HF, "batch_norm_magnitude_relu", fail)
    with pytest.raises(RuntimeError, match="out of memory"), torch.no_grad():
        block(z)  # dense-nchw (not native: convolution, then the fused PyTorch path)
    assert conv.last_choice[1] == "dense-nchw" and conv._ticket is None
    assert measured == ["dense"]  # the failed call recorded nothing
    monkeypatch.setattr(block_module.HF, "batch_norm_magnitude_relu", real)
    with torch.no_grad():
        block(z)
    assert conv.last_choice[1] == "dense-nchw"  # made again
    calls = _infer_until_decided(block, z)
    assert 2 + calls == 4 * (1 + dispatch.MIN_ROUNDS)
    assert dispatch.decisions()[conv.last_choice[0]]["choice"] == "karatsuba"


def test_a_block_times_the_fused_work_its_scheme_leads_to(tuning, monkeypatch) -> None:
    """In a fused block the convolution's trial spans the nonlinearity and pooling that
    read its products: one timed call per block call, ended after the block's output."""
    from hnets.nn import HBlock, HNonLinearity
    from hnets.nn import block as block_module

    times, measured = tuning
    events: list[str] = []
    real_elapsed = dispatch._elapsed
    monkeypatch.setattr(
        dispatch, "_elapsed", lambda t: (events.append("end " + t.name), real_elapsed(t))[1]
    )
    for fn in ("relu_of_products",):
        real = getattr(block_module, fn)
        monkeypatch.setattr(
            block_module, fn, lambda *a, _r=real, _n=fn, **k: (events.append(_n), _r(*a, **k))[1]
        )
    real_relu = block_module.HF.magnitude_relu
    monkeypatch.setattr(
        block_module.HF,
        "magnitude_relu",
        lambda *a, **k: (events.append("magnitude_relu"), real_relu(*a, **k))[1],
    )
    block = HBlock(HConv2d(4, 4, 5, max_order=1), HNonLinearity(4, 1), pool=2).eval()
    calls = _infer_until_decided(block, _input(block.conv))
    ends = [e for e in events if e.startswith("end ")]
    assert len(ends) == calls  # one timed call per block call
    assert "unmerged" in block.conv.last_choice[0]
    for i, event in enumerate(events):
        if event.startswith("end "):
            assert i > 0 and not events[i - 1].startswith("end ")  # after the nonlinearity
    assert len(measured) == calls


@pytest.mark.parametrize("winner", ["dense", "dense-nchw", "gauss", "karatsuba"])
def test_every_choice_gives_the_same_outputs_and_gradients(tuning, winner) -> None:
    """Training measures on the job: every call of the trial, whichever candidate it
    runs, gives the reference's output and gradients; then the winner runs."""
    times, measured = tuning
    for name in times:
        times[name] = 1.0 if name == winner else 1.2
    torch.manual_seed(0)
    auto = HConv2d(4, 6, 5, max_order=1)
    ref = HConv2d(4, 6, 5, max_order=1, impl="dense")
    ref.load_state_dict(auto.state_dict())
    z = _input(auto).requires_grad_()
    expected = ref(z)
    ref_grads = torch.autograd.grad(expected.square().sum(), [z, ref.weight])
    ran: list[str] = []
    for _ in range(2 * 4 * (1 + dispatch.MIN_ROUNDS)):
        out = auto(z)
        ran.append(auto.last_choice[1])
        grads = torch.autograd.grad(out.square().sum(), [z, auto.weight])
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert not dispatch.open_trials() and "train" in auto.last_choice[0]
    assert set(ran) == set(times) and ran[-4:] == [winner] * 4
    assert len(measured) == 4 * (1 + dispatch.MIN_ROUNDS)  # one timed backward per call
    assert auto.weight.grad is None  # nothing left behind


def _ticking(clock: list[float], seconds: float):  # noqa: ANN202
    """An identity that advances the fake ``clock`` by ``seconds`` in forward and backward."""

    class Tick(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # noqa: ANN001, ANN205
            clock[0] += seconds
            return x.clone()

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            clock[0] += seconds
            return grad

    return Tick.apply


def test_a_training_call_is_timed_through_its_backward(tuning, monkeypatch) -> None:
    """A training call's trial spans its forward and its backward from the output's
    gradient to the input's, the filter synthesis's backward included, nothing else
    (autograd runs the synthesis's backward before the input's producer)."""
    clock = [0.0]
    monkeypatch.setattr(dispatch, "_elapsed", _REAL_ELAPSED)
    monkeypatch.setattr(dispatch, "_now", lambda: clock[0])
    conv = HConv2d(4, 4, 5, max_order=1)
    real = conv._synthesise
    monkeypatch.setattr(
        conv, "_synthesise", lambda impl: tuple(_ticking(clock, 1.0)(w) for w in real(impl))
    )
    z = _ticking(clock, 100.0)(_input(conv).requires_grad_())  # before the layer
    for _ in range(4 + 3):  # the untimed calls, then dense, dense-nchw and gauss timed
        out = conv(z)
        _ticking(clock, 1000.0)(out).sum().backward()  # after the layer
    trial = dispatch._trials[conv.last_choice[0]]
    assert conv.last_choice[1] == "gauss" and len(trial.warm) == 4
    # the synthesis of 1 (dense) or 3 (Gauss) banks, forward and backward; the
    # convolution itself takes no time on this clock
    assert trial.samples == {"dense": [2.0], "dense-nchw": [2.0], "gauss": [6.0], "karatsuba": []}


def test_training_calls_whose_backward_never_runs_fall_back_to_separate_calls(tuning) -> None:
    times, measured = tuning
    conv = HConv2d(4, 4, 5, max_order=1)
    z = _input(conv).requires_grad_()
    for _ in range(dispatch.STALLED_ROUNDS * 4):
        conv(z)  # a forward with autograd recording, never a backward
    assert dispatch.open_trials() and not measured
    conv(z)
    assert not dispatch.open_trials() and sorted(measured) == sorted(times)
    assert conv.last_choice[1] == "karatsuba"


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
        "def fake_time(run, names):\n"
        "    trial = dispatch._Trial(names)\n"
        "    for name in names + names:\n"
        "        trial.record(name, {'a': 1.0, 'b': 2.0}[name])\n"
        "    return trial\n"
        "dispatch._time = fake_time\n"
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


def _clocked(monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float]):
    """A fake trial clock that ``seconds[name]`` advances per call; returns ``(run, calls)``."""
    clock = [0.0]
    monkeypatch.setattr(dispatch, "_now", lambda: clock[0])
    calls: list[str] = []

    def run(name: str) -> None:
        calls.append(name)
        clock[0] += seconds[name]

    return run, calls


def test_candidates_are_timed_interleaved_for_a_bounded_number_of_rounds(monkeypatch) -> None:
    seconds = {"a": 1e-4, "b": 1.1e-4}  # fast candidates: the budget runs every round
    run, calls = _clocked(monkeypatch, seconds)
    trial = dispatch._time(run, ["a", "b"])
    assert calls[:2] == ["a", "b"]  # the untimed calls
    rounds = calls[2:]
    assert rounds == ["a", "b"] * dispatch.MAX_ROUNDS  # A, B, A, B, ...
    assert trial.leader() == "a" and trial.medians() == pytest.approx(seconds)
    seconds.update(a=1.0, b=1.1, c=1.2)  # over the budget: only the minimum
    calls.clear()
    dispatch._time(run, ["a", "b", "c"])
    assert calls == ["a", "b", "c"] * (1 + dispatch.MIN_ROUNDS)


def test_a_candidate_far_behind_the_leader_drops_out_after_a_round(monkeypatch) -> None:
    seconds = {"a": 1.0, "b": 1.2, "c": 1.0 * dispatch.DROP_RATIO + 0.01}
    run, calls = _clocked(monkeypatch, seconds)
    trial = dispatch._time(run, ["a", "b", "c"])
    # c: its untimed call and one timed; a and b go on for the minimum of rounds
    assert calls == ["a", "b", "c"] * 2 + ["a", "b"] * (dispatch.MIN_ROUNDS - 1)
    assert trial.active == ["a", "b"] and trial.leader() == "a"
    assert trial.medians() == pytest.approx(seconds)  # the dropped one's still reported
    seconds["b"] = 2.0  # every other candidate far behind: decided after one round
    calls.clear()
    trial = dispatch._time(run, ["b", "a", "c"])
    assert calls == ["b", "a", "c"] * 2 and trial.active == ["a"]
    # the leader's slowest call is the yardstick: a candidate behind its median but
    # within DROP_RATIO of its slowest call stays in
    trial = dispatch._Trial(["a", "b"])
    for name, took in [("a", 9), ("b", 9), ("a", 2.0), ("b", 2.0), ("a", 1.0), ("b", 2.1)]:
        trial.record(name, took)  # a: median 1.5, slowest 2.0; b: fastest 2.0
    assert trial.active == ["a", "b"]
    trial.record("a", 1.0)
    trial.record("b", 2.6)  # a's slowest is still 2.0, b's fastest 2.0: in
    assert trial.active == ["a", "b"] and trial.leader() == "a"
    assert trial.done()  # 3 rounds, over the budget
    # one slow timed call does not drop a candidate whose untimed call was fast
    trial = dispatch._Trial(["a", "b"])
    for name, took in [("a", 1.1), ("b", 1.0), ("a", 1.0), ("b", 2.0)]:
        trial.record(name, took)
    assert trial.active == ["a", "b"]
    trial = dispatch._Trial(["a", "b"])
    for name, took in [("a", 1.1), ("b", 1.3), ("a", 1.0), ("b", 2.0)]:
        trial.record(name, took)  # both of b's calls over 1.25 x 1.0
    assert trial.active == ["a"] and trial.done()


def test_a_trial_on_the_job_records_what_dropped_out(tuning) -> None:
    times, measured = tuning
    times.update({"dense": 3.0, "dense-nchw": 1.1, "gauss": 2.0, "karatsuba": 1.0})
    conv = HConv2d(4, 4, 5, max_order=1)
    assert _infer_until_decided(conv, _input(conv)) == 4 * 2 + 2 * (dispatch.MIN_ROUNDS - 1)
    entry = dispatch.decisions()[conv.last_choice[0]]
    assert entry["choice"] == "karatsuba" and entry["dropped"] == {"dense": 1, "gauss": 1}
    assert entry["seconds"] == times
    from hnets.bench import format_tuning

    row = {"layer": "conv", "mode": "infer", "choice": "karatsuba", **entry}
    report = format_tuning([row])
    assert "gauss 2000.00*" in report and "dense-nchw 1100.00 " in report
    assert "* dropped out after a round" in report


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
def test_a_timed_call_on_the_gpu_waits_for_the_gpu(tuning, monkeypatch, training) -> None:
    # CUDA kernels run asynchronously: without a synchronize, a trial would time only
    # the launches, and the dispatch would pick the scheme that launches fastest
    conv = HConv2d(4, 4, 5, max_order=1).cuda()
    synced: list[torch.device] = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: (synced.append(d), real(d)))
    z = _input(conv).cuda()
    if training:
        images, _ = conv._prepare(z)
        conv._trial(images, "dense")
    else:  # on the job: before the timed call (earlier work is not its) and after it
        with torch.no_grad():
            conv(z)
        assert len(synced) == 2
    assert synced and all(d == z.device for d in synced)


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


def test_tuning_a_model_stops_when_its_own_layers_have_decided(tuning) -> None:
    from hnets.bench import tune_model

    other = HConv2d(4, 4, 5, max_order=1)
    with torch.no_grad():
        other(_input(other))  # another module's trial, left open
    assert dispatch.open_trials()
    model = HNetMNIST(width=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls: dict[tuple[str, bool], int] = {}  # (module, training) -> calls

    def count(name: str):  # noqa: ANN202
        def hook(m, i, o) -> None:  # noqa: ANN001
            calls[name, m.training] = calls.get((name, m.training), 0) + 1

        return hook

    for name, module in model.named_modules():
        if name in ("", "head") or (name.startswith("features.") and name.count(".") == 1):
            module.register_forward_hook(count(name))
    tune_model(model, batch_size=4, eval_batch_size=8)
    # the whole model once per mode, then each layer alone (its block) until decided:
    # fake times of seconds (over budget), so after 4 x (1 + MIN_ROUNDS) calls, the
    # first of them the model's (the head, orders 0 only, has no Karatsuba: 3 x 4); the
    # first block reads real images (one scheme): the model's call only
    assert len(model.features) == 6
    for training in (True, False):
        assert calls["", training] == 1
        assert calls["head", training] == 3 * (1 + dispatch.MIN_ROUNDS)
        assert calls["features.0", training] == 1
        for i in range(1, 6):
            assert calls[f"features.{i}", training] == 4 * (1 + dispatch.MIN_ROUNDS)
    assert len(dispatch.open_trials()) == 1  # the other module's, still open
    for name, value in model.state_dict().items():  # batch-norm statistics put back
        assert torch.equal(value, before[name]), name
