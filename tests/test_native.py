"""The native CPU kernels (hnets._native): agreement with the PyTorch paths, and the fallback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from hnets import HConv2d, HNonLinearity, _native
from hnets.models import HNetMNIST
from hnets.nn.batchnorm import HBatchNorm
from hnets.nn.nonlinearity import _relu_backward, _relu_forward_torch

needs_compiler = pytest.mark.skipif(_native._compiler() is None, reason="needs a C compiler")
needs_sh = pytest.mark.skipif(sys.platform == "win32", reason="the fake compiler is a sh script")


def _pairs(*shape, seed=0):
    return torch.randn(*shape, 2, generator=torch.Generator().manual_seed(seed))


@needs_compiler
def test_kernels_build_here():
    assert _native.available()
    assert _native.usable(torch.zeros(2, 3))
    assert not _native.usable(torch.zeros(2, 3, dtype=torch.float64))
    assert not _native.usable(torch.zeros(3, 2).t())  # not contiguous


def test_env_switch_turns_them_off(monkeypatch):
    monkeypatch.setenv("HNETS_NATIVE", "0")
    assert _native.disabled()
    assert not _native.available()
    assert not _native.usable(torch.zeros(2, 3))


@needs_compiler
@pytest.mark.parametrize("scaled", [False, True])
def test_relu_forward_matches_pytorch(scaled):
    z = _pairs(5, 6, 7, 4, 2)  # positions..., C=4, M=2
    scale = torch.rand(4, 2) + 0.5 if scaled else None
    bias = torch.linspace(-1.0, 0.5, 8).view(4, 2)
    ours = _native.relu_forward(z, scale, bias, 1e-6)
    ref = _relu_forward_torch(z, scale, bias, 1e-6)
    # the same float operations; ATen's vectorised sqrt may differ by one ulp
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    assert (ours == 0).sum() == (ref == 0).sum() > 0  # the same pairs switched off


@needs_compiler
@pytest.mark.parametrize("scaled", [False, True])
def test_relu_backward_matches_pytorch(scaled):
    z, g = _pairs(5, 6, 7, 4, 2), _pairs(5, 6, 7, 4, 2, seed=1)
    scale = torch.rand(4, 2) + 0.5 if scaled else None
    bias = torch.linspace(-1.0, 0.5, 8).view(4, 2)
    corr = torch.randn(4, 2)
    ours, grad_scale, grad_bias = _native.relu_backward(g, z, scale, bias, 1e-6, corr=corr)
    gs, kz, ref_scale, ref_bias = _relu_backward(
        g, z, scale, bias, 1e-6, need_bias=True, need_scale=True
    )
    kz = kz - corr
    ref = torch.addcmul(g * gs.unsqueeze(-1), z, kz.unsqueeze(-1))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_scale.float(), ref_scale, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_bias.float(), ref_bias, rtol=1e-5, atol=1e-5)
    none, _, again = _native.relu_backward(g, z, scale, bias, 1e-6, write=False)
    assert none is None
    torch.testing.assert_close(again, grad_bias)


def _grads(module_fn, inputs):
    out = module_fn()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(out, inputs, g)
    return out.detach(), grads


@needs_compiler
@pytest.mark.parametrize("with_bn", [False, True])
def test_layers_agree_with_and_without_kernels(with_bn, monkeypatch):
    torch.manual_seed(0)
    act, bn = HNonLinearity(3, 1), HBatchNorm(3, 1)
    with torch.no_grad():
        act.bias.uniform_(-1.0, 0.5)
        bn.weight.uniform_(0.5, 1.5)
    z = torch.randn(4, 3, 2, 2, 9, 9, requires_grad=True)
    params = [z, act.bias] + ([bn.weight] if with_bn else [])

    def run():
        return act(z, bn=bn if with_bn else None)

    ours = _grads(run, params)
    monkeypatch.setenv("HNETS_NATIVE", "0")
    ref = _grads(run, params)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(ours[1], ref[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_compiler
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("impl", ["gauss", "karatsuba"])
def test_fast_convolutions_match_the_dense_bank(stride, impl):
    torch.manual_seed(0)
    dense = HConv2d(6, 5, 5, max_order=1, impl="dense", stride=stride)
    gauss = HConv2d(6, 5, 5, max_order=1, impl=impl, stride=stride)
    gauss.load_state_dict(dense.state_dict())
    z = torch.randn(3, 6, 2, 2, 11, 11, requires_grad=True)
    outs, grads = [], []
    for conv in (dense, gauss):
        out = conv(z)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads.append(torch.autograd.grad(out, [z, conv.weight, conv.phase], g))
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the forward-only branch
        torch.testing.assert_close(gauss(z), outs[0], rtol=1e-4, atol=1e-5)


@needs_compiler
@pytest.mark.parametrize("impl", ["gauss", "karatsuba"])
def test_fast_convolutions_refuse_double_backward(impl):
    conv = HConv2d(4, 4, 3, max_order=1, impl=impl)
    z = torch.randn(2, 4, 2, 2, 6, 6, requires_grad=True)
    (grad,) = torch.autograd.grad(conv(z).square().sum(), z, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


@needs_compiler
def test_tile_spread_is_the_mean_pool_backward():
    g = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last)
    out = _native.tile_spread(g, 2)
    expected = torch.nn.functional.interpolate(g, scale_factor=2, mode="nearest") / 4
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last)


@needs_compiler
def test_model_logits_agree_with_and_without_kernels(monkeypatch):
    torch.manual_seed(0)
    model = HNetMNIST().eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.inference_mode():
        ours = model(x)
        monkeypatch.setenv("HNETS_NATIVE", "0")
        ref = model(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_missing_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert not _native.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, then quiet
        assert not _native.usable(torch.zeros(2, 2))
        act = HNonLinearity(2, 1)
        act(torch.randn(1, 2, 2, 2, 3, 3))  # the PyTorch path


@needs_compiler
def test_broken_build_falls_back(monkeypatch, tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setattr(_native, "_SOURCE", bad)
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="unavailable"):
        assert not _native.available()
    suffix = _native._platform()[0]
    assert not list((tmp_path / "cache").glob(f"*{suffix}"))  # nothing half-written left behind


@needs_compiler
def test_build_is_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path))
    assert _native.available()
    built = list(tmp_path.glob(f"magnitude-*{_native._platform()[0]}"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(_native, "_state", {})
    assert _native.available()
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def _autograd_names(t: torch.Tensor) -> set[str]:
    """Names of every node in ``t``'s autograd graph."""
    seen, todo = {}, [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and id(fn) not in seen:
            seen[id(fn)] = fn.name()
            todo += [nxt for nxt, _ in fn.next_functions]
    return set(seen.values())


@needs_compiler
@pytest.mark.parametrize(
    ("mi", "mo", "phase", "impl"),
    [
        (0, 2, True, "real"),
        (0, 1, False, "real"),
        (1, 1, True, "dense"),
        (2, 1, False, "dense"),
        (1, 1, True, "gauss"),
        (1, 2, False, "gauss"),
        (1, 1, True, "karatsuba"),
        (1, 1, False, "karatsuba"),
    ],
)
def test_native_synthesis_matches_pytorch(mi, mo, phase, impl, monkeypatch):
    """The training-time filter banks: same values, layout and parameter gradients."""
    torch.manual_seed(mi + 3 * mo)
    conv = HConv2d(5, 3, 5, max_order=mo, in_max_order=mi, phase=phase)
    params = [conv.weight] + ([conv.phase] if phase else [])

    def banks_and_grads():
        banks = conv._synthesise(impl)
        grads = [torch.randn(b.shape, generator=torch.Generator().manual_seed(i)) for i, b in
                 enumerate(banks)]  # fmt: skip
        conv.zero_grad()
        sum((b * g).sum() for b, g in zip(banks, grads, strict=True)).backward()
        return banks, [p.grad.clone() for p in params]

    ours, our_grads = banks_and_grads()
    assert "_SynthesisBackward" in _autograd_names(ours[0])
    monkeypatch.setenv("HNETS_NATIVE", "0")
    ref, ref_grads = banks_and_grads()
    assert "_SynthesisBackward" not in _autograd_names(ref[0])
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape and a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_compiler
def test_native_synthesis_supports_double_backward(monkeypatch):
    """A gradient penalty (create_graph=True) through the native synthesis equals PyTorch's."""
    torch.manual_seed(0)
    conv = HConv2d(3, 4, 5, max_order=1, in_max_order=1, impl="dense")
    z = torch.randn(2, 3, 2, 2, 9, 9, requires_grad=True)

    def penalty_grads():
        out = conv(z)
        (gz,) = torch.autograd.grad(out.square().sum(), z, create_graph=True)
        conv.zero_grad()
        gz.square().sum().backward()
        return out, conv.weight.grad.clone(), conv.phase.grad.clone()

    out, *ours = penalty_grads()
    assert "_SynthesisBackward" in _autograd_names(out)
    monkeypatch.setenv("HNETS_NATIVE", "0")
    _, *ref = penalty_grads()
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_compiler
def test_karatsuba_native_and_pytorch_paths_agree(monkeypatch):
    """The native (de)interleaving against the PyTorch-op version of the same nine products."""
    torch.manual_seed(0)
    conv = HConv2d(4, 3, 5, max_order=1, impl="karatsuba")
    z = torch.randn(2, 4, 2, 2, 9, 9, requires_grad=True)
    out = conv(z)
    assert "_KaratsubaConvBackward" in _autograd_names(out)
    grads = torch.autograd.grad(out.square().sum(), [z, conv.weight, conv.phase])
    monkeypatch.setenv("HNETS_NATIVE", "0")
    ref = conv(z)
    assert "_KaratsubaConvBackward" not in _autograd_names(ref)
    ref_grads = torch.autograd.grad(ref.square().sum(), [z, conv.weight, conv.phase])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


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


@needs_compiler
@pytest.mark.parametrize(
    ("kind", "pool", "scaled"), [(3, 1, False), (3, 2, True), (9, 1, True), (9, 2, False)]
)
def test_relu_of_unmerged_products_matches_merge_then_relu(kind, pool, scaled):
    torch.manual_seed(kind + pool)
    t, h, w = 3, 6, 4
    products = [
        torch.randn(2, t, h, w).contiguous(memory_format=torch.channels_last) for _ in range(kind)
    ]
    streams = (t, 1) if kind == 3 else (t, 2)
    n = streams[0] * streams[1]
    scale = torch.rand(*streams) + 0.5 if scaled else None
    bias = torch.linspace(-1.0, 0.5, n).view(streams)
    merged = _native.merge3(*products, -1.0, 1.0) if kind == 3 else _native.merge9(products)
    pairs = merged.permute(0, 2, 3, 1).reshape(2, h, w, *streams, 2)
    expected = _native.relu_forward(pairs, scale, bias, 1e-6, pool=pool)
    got = _native.relu_products(products, streams, scale, bias, 1e-6, pool=pool)
    assert got.shape == (2, h // pool, w // pool, *streams, 2)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def _fake_cc(tmp_path: Path, refuse: str) -> Path:
    """A compiler script that fails on any argument matching the sh pattern ``refuse`` (naming
    it, as compilers do) and otherwise runs the real compiler; it logs each command line."""
    real = shutil.which(_native._compiler() or "cc") or "cc"
    script = tmp_path / "fake-cc"
    script.write_text(
        "#!/bin/sh\n"
        f"echo \"$*\" >> '{tmp_path / 'cc.log'}'\n"
        'for arg in "$@"; do\n'
        f'  case "$arg" in {refuse}) echo "fake-cc: error: unsupported option \'$arg\'" >&2; '
        "exit 1;; esac\n"
        "done\n"
        f"exec '{real}' \"$@\"\n"
    )
    script.chmod(0o755)
    return script


def _fresh_build(monkeypatch, tmp_path: Path, refuse: str) -> Path:
    """Nothing loaded, an empty cache, ``CC`` -> a fake compiler refusing ``refuse``."""
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(_fake_cc(tmp_path, refuse)))
    return tmp_path / "cc.log"


def _compiles(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "magnitude.c" in line]


@needs_compiler
@needs_sh
def test_compiler_without_openmp_gets_the_serial_build(monkeypatch, tmp_path):
    log = _fresh_build(monkeypatch, tmp_path, "-fopenmp")  # as Apple clang
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the kernels are there
        assert _native.available()
    assert _native.variant() == "serial"
    flags = _native._state["flags"]
    assert "-fopenmp" not in flags and "-fopenmp-simd" in flags and "-march=native" in flags
    assert [p.name.split("-")[1] for p in (tmp_path / "cache").iterdir()] == ["serial"]
    first, second = _compiles(log)  # OpenMP refused: straight to the serial build
    assert " -fopenmp " in f" {first} " and " -fopenmp " not in f" {second} "

    z, g = _pairs(5, 6, 7, 4, 2), _pairs(5, 6, 7, 4, 2, seed=1)
    bias = torch.linspace(-1.0, 0.5, 8).view(4, 2)
    torch.testing.assert_close(
        _native.relu_forward(z, None, bias, 1e-6),
        _relu_forward_torch(z, None, bias, 1e-6),
        rtol=1e-6,
        atol=1e-7,
    )
    power = (z.double() ** 2).sum(-1).sum((0, 1, 2))  # per-thread sums, one thread here
    torch.testing.assert_close(_native.power_sum(z), power, rtol=1e-6, atol=1e-6)
    _, _, grad_bias = _native.relu_backward(g, z, None, bias, 1e-6, write=False)
    ref_bias = _relu_backward(g, z, None, bias, 1e-6, need_bias=True, need_scale=False)[3]
    torch.testing.assert_close(grad_bias.float(), ref_bias, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    model, x = HNetMNIST().eval(), torch.rand(4, 1, 28, 28)
    with torch.inference_mode():
        ours = model(x)
        monkeypatch.setenv("HNETS_NATIVE", "0")
        ref = model(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@needs_compiler
@needs_sh
def test_serial_build_is_found_in_the_cache_without_compiling(monkeypatch, tmp_path):
    log = _fresh_build(monkeypatch, tmp_path, "-fopenmp")
    assert _native.variant() == "serial"
    before = len(_compiles(log))
    monkeypatch.setattr(_native, "_state", {})  # a new process, as far as hnets knows
    assert _native.variant() == "serial"
    assert len(_compiles(log)) == before  # not even the OpenMP build is retried


@needs_compiler
@needs_sh
@pytest.mark.parametrize("flag", ["-fno-tree-loop-distribute-patterns", "-march=native"])
def test_rejected_tuning_flags_are_dropped(flag, monkeypatch, tmp_path):
    """clang rejects GCC's -fno-tree-loop-distribute-patterns; some compilers -march=native."""
    log = _fresh_build(monkeypatch, tmp_path, flag)
    assert _native.variant() == "openmp"
    flags = _native._state["flags"]
    assert flag not in flags
    assert set(_native._TUNING) - {flag} <= set(flags)  # the others kept
    assert len(_compiles(log)) == 2  # dropped as soon as the compiler named it


@needs_sh
def test_compiler_that_always_fails_warns_once(monkeypatch, tmp_path):
    log = _fresh_build(monkeypatch, tmp_path, "*")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not _native.available()
        assert _native.variant() is None
        assert not _native.usable(torch.zeros(2, 2))
        HNonLinearity(2, 1)(torch.randn(1, 2, 2, 2, 3, 3))  # the PyTorch path
    assert [w.category for w in caught] == [RuntimeWarning]
    assert "fake-cc: error" in str(caught[0].message)
    compiles = _compiles(log)
    assert any(" -fopenmp " in f" {c} " for c in compiles)  # tried with OpenMP
    assert any(" -fopenmp " not in f" {c} " for c in compiles)  # and without
    assert not list((tmp_path / "cache").iterdir())  # no temporaries left behind


@needs_compiler
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_openmp_runtime_next_to_torch(tmp_path):
    """Loaded after torch, the OpenMP build maps no second libgomp: its NEEDED libgomp.so.1
    is torch's own (same soname), as a fresh process's /proc/self/maps shows."""
    code = (
        "import os, torch\n"
        "def gomp():\n"
        "    lines = open('/proc/self/maps').read().splitlines()\n"
        "    return {os.path.realpath(l.split()[-1]) for l in lines if 'libgomp' in l}\n"
        "before = gomp()\n"
        "from hnets import _native\n"
        "print(_native.variant(), len(before), len(gomp() - before))\n"
    )
    env = {**os.environ, "HNETS_CACHE_DIR": str(tmp_path), "HNETS_NATIVE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    variant, torch_runtimes, added = out.stdout.split()
    if variant != "openmp":
        pytest.skip(f"the {variant} build here")
    assert added == "0", "the kernels loaded a second libgomp next to torch's"
