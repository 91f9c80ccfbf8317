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

from hnets import HNonLinearity, _native
from hnets._native import build
from hnets.models import HNetMNIST
from hnets.nn import functional as HF
from hnets.nn.batchnorm import HBatchNorm
from hnets.nn.fused_relu import _relu_backward, relu_pairs

needs_compiler = pytest.mark.skipif(build._compiler() is None, reason="needs a C compiler")
needs_sh = pytest.mark.skipif(sys.platform == "win32", reason="the fake compiler is a sh script")


def _relu_forward_torch(pairs, scale, bias, eps):
    """The magnitude ReLU's definition in PyTorch ops, with the native kernel's signature."""
    return relu_pairs(pairs, bias, eps, scale)


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

    def run():  # as HBlock runs the two layers (hnets.nn.functional)
        if not with_bn:
            return HF.magnitude_relu(z, act.bias, eps=act.eps)
        return HF.batch_norm_magnitude_relu(
            z, act.bias, bn.weight, bn.running_power, training=True, bn_eps=bn.eps, eps=act.eps
        )

    ours = _grads(run, params)
    monkeypatch.setenv("HNETS_NATIVE", "0")
    ref = _grads(run, params)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(ours[1], ref[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


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
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setattr(build, "_compiler", lambda: None)
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
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setattr(build, "_SOURCE", bad)
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="unavailable"):
        assert not _native.available()
    suffix = build._platform()[0]
    assert not list((tmp_path / "cache").glob(f"*{suffix}"))  # nothing half-written left behind


@needs_compiler
def test_build_is_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path))
    assert _native.available()
    built = list(tmp_path.glob(f"kernels-*{build._platform()[0]}"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(build, "_state", {})
    assert _native.available()
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


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
    real = shutil.which(build._compiler() or "cc") or "cc"
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
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(_fake_cc(tmp_path, refuse)))
    return tmp_path / "cc.log"


def _compiles(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "kernels.c" in line]


@needs_compiler
@needs_sh
def test_compiler_without_openmp_gets_the_serial_build(monkeypatch, tmp_path):
    log = _fresh_build(monkeypatch, tmp_path, "-fopenmp")  # as Apple clang
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the kernels are there
        assert _native.available()
    assert _native.variant() == "serial"
    flags = build._state["flags"]
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
    monkeypatch.setattr(build, "_state", {})  # a new process, as far as hnets knows
    assert _native.variant() == "serial"
    assert len(_compiles(log)) == before  # not even the OpenMP build is retried


@needs_compiler
@needs_sh
@pytest.mark.parametrize("flag", ["-fno-tree-loop-distribute-patterns", "-march=native"])
def test_rejected_tuning_flags_are_dropped(flag, monkeypatch, tmp_path):
    """clang rejects GCC's -fno-tree-loop-distribute-patterns; some compilers -march=native."""
    log = _fresh_build(monkeypatch, tmp_path, flag)
    assert _native.variant() == "openmp"
    flags = build._state["flags"]
    assert flag not in flags
    assert set(build._TUNING) - {flag} <= set(flags)  # the others kept
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


# -- the ctypes boundary: every wrapper refuses what its kernel cannot read ------------
def _cl(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def _synthesis_args() -> dict:
    f, o, i, r, g, a, b = 2, 3, 4, 2, 3, 5, 2
    phase = torch.rand(f, o, i)
    return {
        "weight": torch.randn(f, o, i, r),
        "cos": phase.cos(),
        "sin": phase.sin(),
        "layout": torch.randn(f * r * 2, g, a, b),
        "grad": torch.randn(g, o, a, i, b),
        "layout_t": torch.randn(g, a, b, f * r * 2),
    }


# (wrapper, its valid arguments, the call, the argument to spoil, a wrong shape for it)
BOUNDARY = {
    "relu_forward": (
        lambda: {"pairs": _pairs(2, 3, 4, 2), "bias": torch.zeros(4, 2)},
        lambda a: _native.relu_forward(a["pairs"], None, a["bias"], 1e-6),
        "pairs",
        (2, 3, 4, 2, 3),
    ),
    "relu_forward(pool=2)": (
        lambda: {"pairs": _pairs(2, 4, 6, 3, 2), "bias": torch.zeros(3, 2)},
        lambda a: _native.relu_forward(a["pairs"], None, a["bias"], 1e-6, pool=2),
        "pairs",
        (2, 5, 6, 3, 2, 2),  # H not a multiple of the pool
    ),
    "relu_forward(inplace)": (
        lambda: {"pairs": _pairs(2, 3, 4, 2), "bias": torch.zeros(4, 2)},
        lambda a: _native.relu_forward(a["pairs"], None, a["bias"], 1e-6, inplace=True),
        "pairs",
        (2, 3, 4, 2, 1),
    ),
    "power_sum": (
        lambda: {"pairs": _pairs(2, 3, 4, 2)},
        lambda a: _native.power_sum(a["pairs"]),
        "pairs",
        (8,),
    ),
    "relu_backward": (
        lambda: {
            "grad": _pairs(2, 3, 4, 2),
            "pairs": _pairs(2, 3, 4, 2),
            "bias": torch.zeros(4, 2),
        },
        lambda a: _native.relu_backward(a["grad"], a["pairs"], None, a["bias"], 1e-6),
        "grad",
        (2, 3, 4, 1, 2),
    ),
    "relu_backward(pool=2)": (
        lambda: {
            "grad": _pairs(2, 2, 3, 3, 2),
            "pairs": _pairs(2, 4, 6, 3, 2),
            "bias": torch.zeros(3, 2),
        },
        lambda a: _native.relu_backward(a["grad"], a["pairs"], None, a["bias"], 1e-6, pool=2),
        "grad",
        (2, 4, 6, 3, 2, 2),  # the full-size map where the pooled gradient belongs
    ),
    "split3": (
        lambda: {"images": _cl(2, 6, 4, 5)},
        lambda a: _native.split3(a["images"]),
        "images",
        (2, 5, 4, 5),
    ),  # fmt: skip
    "merge3": (
        lambda: {"p": _cl(2, 3, 4, 5), "q": _cl(2, 3, 4, 5), "r": _cl(2, 3, 4, 5)},
        lambda a: _native.merge3(a["p"], a["q"], a["r"], -1.0, 1.0),
        "q",
        (2, 3, 4, 4),
    ),
    "tile_spread": (
        lambda: {"grad": _cl(2, 6, 3, 4)},
        lambda a: _native.tile_spread(a["grad"], 2),
        "grad",
        (6, 3, 4),
    ),  # fmt: skip
    "split9": (
        lambda: {"images": _cl(2, 8, 4, 5)},
        lambda a: _native.split9(a["images"]),
        "images",
        (2, 6, 4, 5),
    ),  # fmt: skip
    "split9_grad": (
        lambda: {"grad": _cl(2, 8, 4, 5)},
        lambda a: _native.split9_grad(a["grad"]),
        "grad",
        (2, 6, 4, 5),
    ),  # fmt: skip
    "merge9": (
        lambda: {"maps": [_cl(2, 3, 4, 5) for _ in range(9)]},
        lambda a: _native.merge9(a["maps"]),
        "maps",
        (2, 3, 4, 4),
    ),
    "merge9_grad": (
        lambda: {"maps": [_cl(2, 3, 4, 5) for _ in range(9)]},
        lambda a: _native.merge9_grad(a["maps"]),
        "maps",
        (2, 3, 4, 4),
    ),
    "relu_products": (
        lambda: {"maps": [_cl(2, 3, 4, 6) for _ in range(3)], "bias": torch.zeros(3, 1)},
        lambda a: _native.relu_products(a["maps"], (3, 1), None, a["bias"], 1e-6, pool=2),
        "maps",
        (2, 3, 4, 5),  # W not a multiple of the pool
    ),
    "synthesise": (
        _synthesis_args,
        lambda a: _native.synthesise(a["weight"], a["cos"], a["sin"], a["layout"]),
        "layout",
        (7, 3, 5, 2),  # q is not F * R * 2
    ),
    "synthesise_backward": (
        _synthesis_args,
        lambda a: _native.synthesise_backward(
            a["grad"], a["weight"], a["cos"], a["sin"], a["layout_t"]
        ),  # fmt: skip
        "grad",
        (3, 3, 5, 4, 1),
    ),
}


def _spoil(args: dict, key: str, how) -> dict:  # noqa: ANN001
    """``args`` with ``how`` applied to ``args[key]`` (to the last map of a list of maps)."""
    args = dict(args)
    value = args[key]
    args[key] = [*value[:-1], how(value[-1])] if isinstance(value, list) else how(value)
    return args


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values and shape, every other element of a twice larger buffer: dense in
    no memory format."""
    return t.new_empty(*t.shape, 2)[..., 0].copy_(t)


def _refused(name: str, args: dict) -> pytest.ExceptionInfo:
    with pytest.raises(ValueError, match=rf"^hnets\._native\.{name.split('(')[0]}: ") as info:
        BOUNDARY[name][1](args)
    return info


@needs_compiler
@pytest.mark.parametrize("name", list(BOUNDARY))
def test_wrappers_take_what_their_kernels_read(name):
    make, call, _, _ = BOUNDARY[name]
    call(make())  # the valid arguments go through


@pytest.mark.parametrize("name", list(BOUNDARY))
def test_wrappers_refuse_a_wrong_shape(name):
    make, _, key, shape = BOUNDARY[name]
    info = _refused(name, _spoil(make(), key, lambda t: torch.randn(shape)))
    assert "shape" in str(info.value) or "channels" in str(info.value)


@pytest.mark.parametrize("name", list(BOUNDARY))
def test_wrappers_refuse_float64(name):
    make, _, key, _ = BOUNDARY[name]
    info = _refused(name, _spoil(make(), key, lambda t: t.double()))
    assert "torch.float64" in str(info.value)


@pytest.mark.parametrize("name", list(BOUNDARY))
def test_wrappers_refuse_a_tensor_on_another_device(name):
    make, _, key, _ = BOUNDARY[name]
    info = _refused(name, _spoil(make(), key, lambda t: t.to("meta")))
    assert "the CPU" in str(info.value)


@pytest.mark.parametrize("name", [n for n in BOUNDARY if n not in ("merge9", "merge9_grad",
                                                                   "relu_products")])  # fmt: skip
def test_wrappers_refuse_a_non_contiguous_tensor(name):
    make, _, key, _ = BOUNDARY[name]
    info = _refused(name, _spoil(make(), key, _strided))
    assert "is not" in str(info.value) and "strides" in str(info.value)


@needs_compiler
@pytest.mark.parametrize("name", ["merge9", "merge9_grad", "relu_products"])
def test_wrappers_of_lists_of_maps_copy_other_layouts_first(name):
    """These take maps in any layout (copied to channels-last, as they always have been)."""
    make, call, key, _ = BOUNDARY[name]
    args = make()
    torch.testing.assert_close(call(_spoil(args, key, _strided)), call(args), rtol=0, atol=0)


def test_the_check_names_the_function_and_the_tensor():
    with pytest.raises(ValueError, match=r"^hnets\._native\.merge3: r is torch\.float64"):
        _native.merge3(_cl(1, 2, 3, 3), _cl(1, 2, 3, 3), _cl(1, 2, 3, 3).double(), -1.0, 1.0)
    args = _synthesis_args()
    with pytest.raises(ValueError, match="cos, sin must both be given or both be None"):
        _native.synthesise(args["weight"], args["cos"], None, args["layout"])
    with pytest.raises(ValueError, match=r"relu_forward: bias has shape \(3,\); expected 8"):
        _native.relu_forward(_pairs(2, 4, 2), None, torch.zeros(3), 1e-6)
    with pytest.raises(ValueError, match="merge9: maps are 8; expected 9"):
        _native.merge9([_cl(1, 2, 3, 3)] * 8)


# -- the build's identity: a hash of kernels.c, no hand-kept version -------------------
def test_the_source_hash_is_the_only_version():
    text = build._SOURCE.read_text()
    assert "HNETS_SOURCE_HASH" in text and "abi_version" not in text
    assert not hasattr(build, "_ABI_VERSION")
    assert build.source_hash(b"a") != build.source_hash(b"b")
    assert build.source_hash(b"a") == build.source_hash(b"a") < 2**64


@needs_compiler
def test_a_changed_source_builds_a_new_library(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path / "cache"))
    assert _native.available()
    suffix = build._platform()[0]
    (old,) = (tmp_path / "cache").glob(f"kernels-*{suffix}")
    old_hash = build.source_hash(build._SOURCE.read_bytes())
    assert f"{old_hash:016x}" in old.name
    assert build.library().hnets_source_hash() == old_hash

    changed = tmp_path / "kernels.c"
    changed.write_text(build._SOURCE.read_text() + "\n/* changed */\n")
    new_hash = build.source_hash(changed.read_bytes())
    monkeypatch.setattr(build, "_SOURCE", changed)
    monkeypatch.setattr(build, "_state", {})
    assert _native.available()
    assert build.library().hnets_source_hash() == new_hash != old_hash
    new = [p for p in (tmp_path / "cache").glob(f"kernels-*{suffix}") if p != old]
    assert len(new) == 1 and f"{new_hash:016x}" in new[0].name


@needs_compiler
def test_a_library_from_another_source_is_stale(monkeypatch, tmp_path):
    """A library whose built-in hash is not the source's is refused at load, even under
    the file name the current source would have: the chain builds one of its own."""
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("HNETS_CACHE_DIR", str(tmp_path / "cache"))
    assert _native.available()
    suffix = build._platform()[0]
    (built,) = (tmp_path / "cache").glob(f"kernels-*{suffix}")
    real_hash = build.source_hash(build._SOURCE.read_bytes())
    with pytest.raises(build.StaleBuildError, match="stale"):
        build._open(built, real_hash ^ 1)

    # the source "changes" (its hash does): the old library, copied under the name the
    # new hash gives it, is found in the cache and refused as stale
    fake_hash = real_hash ^ 1
    stale = tmp_path / "cache" / built.name.replace(f"{real_hash:016x}", f"{fake_hash:016x}")
    shutil.copy(built, stale)
    monkeypatch.setattr(build, "source_hash", lambda source: fake_hash)
    monkeypatch.setattr(build, "_state", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.available()  # built anew (with the flags that name no stale file)
    assert build.library().hnets_source_hash() == fake_hash
