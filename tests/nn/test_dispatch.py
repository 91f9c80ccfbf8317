"""impl="auto": the fixed table, the tuning cache ``hnets tune`` fills, and equal results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hnets import _native, tune
from hnets.models import HNetMNIST
from hnets.nn import HBlock, HConv2d, HNonLinearity, dispatch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private, empty tuning cache directory for the test."""
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path / "cache"))
    dispatch.clear_memory()
    yield tmp_path / "cache"
    dispatch.clear_memory()


def _input(conv: HConv2d, batch: int = 2, size: int = 12) -> torch.Tensor:
    return torch.randn(batch, conv.in_channels, conv.in_max_order + 1, 2, size, size)


def _table(channels: int, size: int, *, capability: str, training: bool = True, **kw) -> str:
    args = {
        "in_channels": channels,
        "out_channels": channels,
        "in_orders": 2,
        "out_orders": 2,
        "pixels": size * size,
        "native": True,
        "karatsuba": True,
        "training": training,
        "capability": capability,
    }
    return dispatch.table_choice(**{**args, **kw})


@pytest.mark.parametrize(
    ("channels", "size", "capability", "training", "expected"),
    [
        (32, 7, "AVX512", True, "karatsuba"),
        (32, 28, "AVX2", False, "karatsuba"),
        (19, 7, "AVX512", False, "gauss"),  # Karatsuba from 32 channels on AVX-512
        (19, 7, "AVX2", True, "gauss"),  # ... and in AVX2 training
        (19, 7, "AVX2", False, "karatsuba"),  # ... but from 16 in AVX2 inference
        (16, 28, "AVX512", True, "gauss"),  # 32 streams
        (10, 14, "AVX2", True, "gauss"),  # 20 streams on a map of at most 16 x 16
        (10, 28, "AVX512", True, "dense"),  # 20 streams on a larger map
        (8, 28, "DEFAULT", True, "dense"),
        (64, 28, "cuda", True, "dense"),  # a GPU: one wide convolution
    ],  # fmt: skip
)
def test_the_table_entries(channels, size, capability, training, expected) -> None:
    assert _table(channels, size, capability=capability, training=training) == expected


def test_the_table_without_native_kernels_and_without_karatsuba_orders() -> None:
    assert _table(16, 28, capability="AVX512", native=False) == "dense"  # 32 streams
    assert _table(32, 28, capability="AVX512", native=False) == "gauss"  # 64 streams
    assert _table(32, 7, capability="AVX512", karatsuba=False) == "gauss"


def test_the_table_is_a_pure_function_of_its_arguments() -> None:
    """The same arguments give the same scheme whatever was called before (no state)."""
    grid = [
        (c, s, cap, t)
        for c in (4, 10, 16, 19, 32, 48)
        for s in (7, 14, 28)
        for cap in ("AVX512", "AVX2", "DEFAULT", "cuda", "mps")
        for t in (True, False)
    ]
    first = [_table(c, s, capability=cap, training=t) for c, s, cap, t in grid]
    again = [_table(c, s, capability=cap, training=t) for c, s, cap, t in reversed(grid)]
    assert first == again[::-1]
    assert set(first) == {"dense", "gauss", "karatsuba"}


def _table_of(conv: HConv2d, images: torch.Tensor, training: bool) -> str:
    """What the table says for ``conv`` on channels-last ``images`` on this machine."""
    return dispatch.table_choice(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        in_orders=conv.in_max_order + 1,
        out_orders=conv.max_order + 1,
        pixels=images.shape[-2] * images.shape[-1],
        native=_native.usable(images, memory_format=torch.channels_last),
        karatsuba=conv.karatsuba_map is not None,
        training=training,
        capability=torch.backends.cpu.get_cpu_capability(),
    )


@pytest.mark.parametrize(("channels", "size"), [(4, 12), (10, 14), (10, 28), (19, 7), (32, 7)])
def test_auto_follows_the_table_for_this_cpu_without_a_cache(cache: Path, channels, size) -> None:
    conv = HConv2d(channels, channels, 5, max_order=1)
    z = _input(conv, size=size)
    images, impl = conv._prepare(z)
    assert impl == _table_of(conv, images, training=True)
    with torch.no_grad():
        assert conv._prepare(z)[1] == _table_of(conv, images, training=False)
    assert dispatch.capability(z.device) in ("AVX512", "AVX2", "DEFAULT")


def test_a_run_never_times_and_never_writes_the_cache(cache: Path, monkeypatch) -> None:
    """Training steps and inference with impl="auto" read; only hnets tune measures."""
    monkeypatch.setattr(tune, "interleaved", lambda *a, **k: pytest.fail("timed in a run"))
    model = HNetMNIST(width=0.5)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    model.eval()
    with torch.inference_mode():
        model(x)
    assert not cache.exists()
    conv = model.features[1].conv
    assert not [k for k in vars(conv) if "ticket" in k or "trial" in k or "held" in k]


def test_a_tuned_decision_is_what_auto_runs(cache: Path) -> None:
    conv = HConv2d(4, 4, 5, max_order=1)
    z = _input(conv)
    images, table = conv._prepare(z)
    other = next(s for s in conv.candidates() if s != table)
    key = conv.dispatch_key(images, training=True)
    dispatch.record({key: {"choice": other, "seconds": dict.fromkeys(conv.candidates(), 1.0)}})
    assert conv._prepare(z)[1] == other
    with dispatch.table_only():
        assert conv._prepare(z)[1] == table
    with torch.no_grad():  # inference is another signature: still the table's
        assert conv._prepare(z)[1] == _table_of(conv, images, training=False)
    dispatch.clear_memory()  # a new process reads the file
    assert conv._prepare(z)[1] == other
    assert json.loads(dispatch.cache_path().read_text())["decisions"][key]["choice"] == other


def test_a_decision_among_other_candidates_is_not_used(cache: Path) -> None:
    """A decision stored before a scheme existed does not hide the newcomer."""
    conv = HConv2d(4, 4, 5, max_order=1)
    z = _input(conv)
    images, table = conv._prepare(z)
    other = next(s for s in conv.candidates() if s != table)
    key = conv.dispatch_key(images, training=True)
    fewer = [s for s in conv.candidates() if s != "dense-nchw"]
    dispatch.record({key: {"choice": other, "seconds": dict.fromkeys(fewer, 1.0)}})
    assert conv._prepare(z)[1] == table


def test_an_unreadable_cache_file_leaves_the_table(cache: Path) -> None:
    path = dispatch.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{ not json")
    conv = HConv2d(4, 4, 5, max_order=1)
    assert conv._prepare(_input(conv))[1] in conv.candidates()
    assert dispatch.decisions() == {}
    path.write_text(json.dumps({"format": 1, "decisions": {"k": {"choice": "gauss"}}}))
    dispatch.clear_memory()
    assert dispatch.decisions() == {}  # the on-the-job format of older versions: not read


def test_a_cache_that_cannot_be_written_warns_and_keeps_the_decision(monkeypatch, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("HNETS_CACHE_DIR", str(blocker / "sub"))  # under a file: not creatable
    dispatch.clear_memory()
    with pytest.warns(UserWarning, match="tuning stays in memory"):
        dispatch.record({"k": {"choice": "gauss", "seconds": {"gauss": 1.0, "dense": 2.0}}})
    assert dispatch.tuned("k", ("gauss", "dense")) == "gauss"
    dispatch.clear_memory()


@pytest.mark.parametrize("impl", ["dense", "dense-nchw", "gauss", "karatsuba"])
def test_every_scheme_gives_the_same_outputs_and_gradients(impl) -> None:
    torch.manual_seed(0)
    conv = HConv2d(4, 6, 5, max_order=1, impl=impl)
    ref = HConv2d(4, 6, 5, max_order=1, impl="dense")
    ref.load_state_dict(conv.state_dict())
    z = _input(conv).requires_grad_()
    out, expected = conv(z), ref(z)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad(out.square().sum(), [z, conv.weight, conv.phase])
    ref_grads = torch.autograd.grad(expected.square().sum(), [z, ref.weight, ref.phase])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def _fake_interleaved(times: dict[str, float], calls: list[str]):  # noqa: ANN202
    """Stands for the timer: runs every candidate once (it must work), returns ``times``."""

    def fake(candidates, **kwargs):  # noqa: ANN001, ANN003, ANN202
        for name, fn in candidates.items():
            fn()
            calls.append(name)
        return {name: [times[name]] * kwargs["rounds"] for name in candidates}

    return fake


def test_tune_model_stores_the_fastest_per_layer_and_mode(cache: Path, monkeypatch) -> None:
    times = {"dense": 1.2, "dense-nchw": 1.3, "gauss": 1.1, "karatsuba": 1.0}
    calls: list[str] = []
    monkeypatch.setattr(tune, "interleaved", _fake_interleaved(times, calls))
    model = HNetMNIST(width=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = tune.tune_model(model, batch_size=4, eval_batch_size=8)
    convs = [m for m in model.modules() if isinstance(m, HConv2d)]
    assert len(rows) == 2 * (len(convs) - 1)  # the first layer reads real images: no choice
    assert {r["mode"] for r in rows} == {"train", "infer"} and all(r["measured"] for r in rows)
    for row, conv in zip(rows, convs[1:] + convs[1:], strict=True):
        best = "karatsuba" if conv.karatsuba_map is not None else "gauss"
        assert row["choice"] == best and set(row["seconds"]) == set(conv.candidates())
    assert len(calls) == sum(len(c.candidates()) for c in convs[1:]) * 2
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm stats back
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert "features.3.conv" in tune.format_tuning(rows)
    # a run now reads the decisions: the layers run the tuned schemes
    x = torch.rand(4, 1, 28, 28)
    model.train()
    ran = _schemes_run(model, x)
    assert ran[1:] == [r["choice"] for r in rows if r["mode"] == "train"]
    # tuning again reads the cache unless told to measure again
    calls.clear()
    assert not any(r["measured"] for r in tune.tune_model(model, batch_size=4, eval_batch_size=8))
    assert calls == []
    tune.tune_model(model, batch_size=4, eval_batch_size=8, again=True)
    assert calls


def _schemes_run(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """The scheme each HConv2d of ``model`` runs on a training call of ``x``."""
    ran: list[str] = []
    hooks = []
    for m in model.modules():
        if isinstance(m, HConv2d):
            hooks.append(
                m.register_forward_pre_hook(lambda mod, a: ran.append(mod._prepare(a[0])[1]))
            )
    try:
        model(x).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    return ran


def test_a_block_is_timed_as_a_whole(cache: Path, monkeypatch) -> None:
    """Inside an HBlock the scheme decides the fused path after it: the block is timed."""
    seen: list[type] = []
    real = tune._call
    monkeypatch.setattr(tune, "_call", lambda m, x, mode: (seen.append(type(m)), real(m, x, mode)))
    monkeypatch.setattr(tune, "interleaved", _fake_interleaved(dict.fromkeys(
        ("dense", "dense-nchw", "gauss", "karatsuba"), 1.0), []))  # fmt: skip
    block = HBlock(HConv2d(4, 4, 5, max_order=1), HNonLinearity(4, 1))
    model = torch.nn.Sequential(HConv2d(1, 4, 5, max_order=1, in_max_order=0), block)
    tune.tune_model(model, batch_size=2, eval_batch_size=2, image_shape=(1, 12, 12))
    assert HBlock in seen and HConv2d not in seen[2:]  # the whole model twice, then the block


def test_the_timer_interleaves_and_respects_rounds_budget_and_max(monkeypatch) -> None:
    from hnets import _timing

    clock = [0.0]
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: clock[0])
    order: list[str] = []

    def fn(name: str, seconds: float):  # noqa: ANN202
        def call() -> None:
            order.append(name)
            clock[0] += seconds

        return call

    fast = {"a": fn("a", 1e-4), "b": fn("b", 2e-4)}
    samples = _timing.interleaved(fast, rounds=3, budget_s=1.0, max_rounds=9)
    assert order[:2] == ["a", "b"] and order[2:] == ["a", "b"] * 9  # warm-up, then rounds
    assert samples["a"] == pytest.approx([1e-4] * 9) and samples["b"] == pytest.approx([2e-4] * 9)
    order.clear()
    slow = {"a": fn("a", 1.0), "b": fn("b", 1.0)}
    samples = _timing.interleaved(slow, rounds=3, budget_s=1.0, max_rounds=9)
    assert len(samples["a"]) == 3  # the budget was spent in the first rounds
    order.clear()
    _timing.interleaved(fast, rounds=2, warmup=0, calls=3)
    assert order == ["a"] * 4 + ["b"] * 4 + ["a"] * 4 + ["b"] * 4  # one untimed, three timed


def test_hnets_tune_prints_the_report_and_again_measures_anew(cache, monkeypatch, capsys) -> None:
    from hnets.cli import main

    calls: list[str] = []
    times = {"dense": 1.2, "dense-nchw": 1.3, "gauss": 1.1, "karatsuba": 1.0}
    monkeypatch.setattr(tune, "interleaved", _fake_interleaved(times, calls))
    args = ["tune", "--width", "0.5", "--batch-size", "4", "--eval-batch-size", "8"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.count("features.") == 2 * 5 and "(cached)" not in captured.out
    assert str(dispatch.cache_path()) in captured.err
    first = len(calls)
    assert main(args) == 0
    assert len(calls) == first and capsys.readouterr().out.count("(cached)") == 2 * 6
    assert main([*args, "--again", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert len(calls) == 2 * first and all(r["measured"] for r in rows)


def test_two_processes_recording_at_once_leave_a_valid_file(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from hnets.nn import dispatch\n"
        "entry = {'choice': 'a', 'seconds': {'a': 1, 'b': 2}}\n"
        "for i in range(40):\n"
        "    dispatch.record({f'{sys.argv[1]}-{i}': entry})\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "HNETS_CACHE_DIR": str(tmp_path), "PATH": ""}
    procs = [subprocess.Popen([sys.executable, "-c", script, tag], env=env) for tag in ("p", "q")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    (path,) = tmp_path.glob("autotune-*.json")
    entries = json.loads(path.read_text())["decisions"]
    assert entries and all(v["choice"] == "a" for v in entries.values())
    assert {k.split("-")[0] for k in entries} <= {"p", "q"}
    assert not list(tmp_path.glob("*.tmp*"))  # no temporary file left behind


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_timer_waits_for_the_gpu(monkeypatch) -> None:
    # CUDA kernels run asynchronously: without a synchronize, tuning would time only the
    # launches and pick the scheme that launches fastest
    from hnets import _timing

    synced: list[torch.device] = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: (synced.append(d), real(d)))
    device = torch.device("cuda")
    _timing.interleaved({"a": lambda: None}, rounds=2, device=device)
    assert len(synced) == 4 and all(d == device for d in synced)
