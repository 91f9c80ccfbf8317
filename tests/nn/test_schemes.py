"""The convolution schemes (hnets.nn.schemes), each against the dense bank: forward and backward.

The reference is built here from complex filters, independently of HConv2d: a complex
convolution ``Y = W * X`` as one real convolution with the interleaved dense bank
``[[W_r, -W_i], [W_i, W_r]]``. Gauss's and Karatsuba's banks are built from the same
complex filters, so the gradients of the filters (and of the input) compare directly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hnets import HConv2d, _native
from hnets._native import build
from hnets.nn import schemes

from ._autograd import autograd_names

needs_compiler = pytest.mark.skipif(build._compiler() is None, reason="needs a C compiler")


def _dense(w_re: torch.Tensor, w_im: torch.Tensor) -> torch.Tensor:
    """Complex filters ``(T, S, k, k)`` -> the real bank ``(2T, 2S, k, k)`` on interleaved pairs."""
    t, s, k, _ = w_re.shape
    top = torch.stack([w_re, -w_im], dim=2)  # output real part
    bottom = torch.stack([w_im, w_re], dim=2)  # output imaginary part
    return torch.stack([top, bottom], dim=1).reshape(2 * t, 2 * s, k, k)


def _gauss_banks(w_re: torch.Tensor, w_im: torch.Tensor) -> list[torch.Tensor]:
    return [w_re, w_re + w_im, w_im - w_re]


def _karatsuba_filters(w_re, w_im):  # noqa: ANN001, ANN202
    """Filters ``(3, T, C, k, k)`` of orders 0, 1, -1 -> the complex ``(2T, 2C)`` block matrix
    (output order from input order ``m_i`` through the filter of order ``m_o - m_i``)."""
    (r0, r1, rm1), (i0, i1, im1) = w_re.unbind(0), w_im.unbind(0)
    t, c, k, _ = r0.shape
    blocks_re = torch.stack([torch.stack([r0, rm1], 2), torch.stack([r1, r0], 2)], 1)
    blocks_im = torch.stack([torch.stack([i0, im1], 2), torch.stack([i1, i0], 2)], 1)
    return blocks_re.reshape(2 * t, 2 * c, k, k), blocks_im.reshape(2 * t, 2 * c, k, k)


def _karatsuba_banks(w_re: torch.Tensor, w_im: torch.Tensor) -> list[torch.Tensor]:
    """``K = W_0, W_-1 - W_0, W_1 - W_0``, each as Gauss's ``(K_r, K_r + K_i, K_i - K_r)``."""
    (r0, r1, rm1), (i0, i1, im1) = w_re.unbind(0), w_im.unbind(0)
    ks = [(r0, i0), (rm1 - r0, im1 - i0), (r1 - r0, i1 - i0)]
    return [m for kr, ki in ks for m in (kr, kr + ki, ki - kr)]


def _case(impl: str, dtype: torch.dtype, seed: int = 0):  # noqa: ANN202
    """Channels-last images, complex filter parts (leaves), and the scheme's banks/dense bank."""
    g = torch.Generator().manual_seed(seed)
    c, t, k, size = 3, 4, 5, 11
    if impl == "karatsuba":
        shape, in_channels = (3, t, c, k, k), 4 * c  # orders 0, 1, -1; inputs (c, order, pair)
    else:
        shape, in_channels = (t, 2 * c, k, k), 2 * (2 * c)  # 2c complex streams in
    w_re = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
    w_im = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
    images = torch.randn(2, in_channels, size, size, generator=g, dtype=dtype)
    images = images.contiguous(memory_format=torch.channels_last).requires_grad_()
    return images, w_re, w_im


def _banks_and_dense(impl: str, w_re: torch.Tensor, w_im: torch.Tensor):  # noqa: ANN202
    if impl == "karatsuba":
        return _karatsuba_banks(w_re, w_im), _dense(*_karatsuba_filters(w_re, w_im))
    if impl == "gauss":
        return _gauss_banks(w_re, w_im), _dense(w_re, w_im)
    return [_dense(w_re, w_im)], _dense(w_re, w_im)


def _forward_and_grads(out: torch.Tensor, leaves: list[torch.Tensor]):  # noqa: ANN202
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    return out.detach(), torch.autograd.grad(out, leaves, cotangent)


PATHS = [
    pytest.param("native", torch.float32, marks=needs_compiler),
    ("torch", torch.float32),
    ("torch", torch.float64),
]


@pytest.mark.parametrize("impl", ["dense", "dense-nchw", "gauss", "karatsuba"])
@pytest.mark.parametrize(("path", "dtype"), PATHS)
@pytest.mark.parametrize("stride", [1, 2])
def test_scheme_matches_the_dense_bank_forward_and_backward(impl, path, dtype, stride, monkeypatch):
    if path == "torch":
        monkeypatch.setenv("HNETS_NATIVE", "0")
    images, w_re, w_im = _case(impl, dtype, seed=stride)
    banks, dense = _banks_and_dense(impl, w_re, w_im)
    leaves = [images, w_re, w_im]
    out = schemes.convolve(images, impl, banks, stride, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)  # what the next layer reads
    if impl not in ("dense", "dense-nchw"):
        native_node = f"{schemes.NATIVE_SCHEMES[impl].__name__}Backward"
        assert (native_node in autograd_names(out)) == (path == "native")
    assert out.is_contiguous(memory_format=torch.channels_last)
    ours, our_grads = _forward_and_grads(out, leaves)
    ref, ref_grads = _forward_and_grads(F.conv2d(images, dense, stride=stride, padding=2), leaves)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(ours, ref, **tol)
    for a, b in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, **tol)
    with torch.no_grad():  # the forward-only branch (scheme.run on the native path)
        torch.testing.assert_close(schemes.convolve(images, impl, banks, stride, 2), ref, **tol)


def test_real_scheme_reads_the_real_half_of_the_dense_bank():
    """``impl="real"``: real images against the columns of the bank that read real parts."""
    images, w_re, w_im = _case("gauss", torch.float64)
    dense = _dense(w_re, w_im).detach()
    real = images.detach()[:, 0::2].contiguous(memory_format=torch.channels_last)
    lifted = torch.stack([real, torch.zeros_like(real)], dim=2).flatten(1, 2)
    torch.testing.assert_close(
        schemes.convolve(real, "real", [dense[:, 0::2]], 1, 2), F.conv2d(lifted, dense, padding=2)
    )


def test_images_and_harmonic_maps_round_trip():
    z = torch.randn(2, 3, 2, 2, 5, 7)
    images = schemes.as_images(z)
    assert images.shape == (2, 12, 5, 7)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(schemes.as_harmonic(images, 3, 2), z)


@needs_compiler
@pytest.mark.parametrize("impl", ["gauss", "karatsuba"])
def test_native_schemes_refuse_double_backward(impl):
    """The native repacking is not recorded: a second derivative raises, never lies."""
    images, w_re, w_im = _case(impl, torch.float32)
    banks, _ = _banks_and_dense(impl, w_re, w_im)
    out = schemes.convolve(images, impl, banks, 1, 2)
    (grad,) = torch.autograd.grad(out.square().sum(), images, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


@needs_compiler
@pytest.mark.parametrize("impl", ["gauss", "karatsuba"])
def test_fast_convolutions_refuse_double_backward(impl):
    conv = HConv2d(4, 4, 3, max_order=1, impl=impl)
    z = torch.randn(2, 4, 2, 2, 6, 6, requires_grad=True)
    (grad,) = torch.autograd.grad(conv(z).square().sum(), z, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


@needs_compiler
def test_karatsuba_native_and_pytorch_paths_agree(monkeypatch):
    """The native (de)interleaving against the PyTorch-op version of the same nine products."""
    torch.manual_seed(0)
    conv = HConv2d(4, 3, 5, max_order=1, impl="karatsuba")
    z = torch.randn(2, 4, 2, 2, 9, 9, requires_grad=True)
    out = conv(z)
    assert "KaratsubaConvBackward" in autograd_names(out)
    grads = torch.autograd.grad(out.square().sum(), [z, conv.weight, conv.phase])
    monkeypatch.setenv("HNETS_NATIVE", "0")
    ref = conv(z)
    assert "KaratsubaConvBackward" not in autograd_names(ref)
    ref_grads = torch.autograd.grad(ref.square().sum(), [z, conv.weight, conv.phase])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_compiler
def test_unmerged_products_merge_into_the_output():
    """``products`` (what the inference fusion reads) merged by the native kernels is ``run``."""
    for impl, merge in (
        ("gauss", lambda p: _native.merge3(*p, -1.0, 1.0)),
        ("karatsuba", _native.merge9),
    ):
        images, w_re, w_im = _case(impl, torch.float32)
        banks, _ = _banks_and_dense(impl, w_re.detach(), w_im.detach())
        scheme = schemes.NATIVE_SCHEMES[impl]
        with torch.no_grad():
            products, _ = scheme.products(images.detach(), banks, 1, 2)
            out, _ = scheme.run(images.detach(), banks, 1, 2)
        assert torch.equal(merge(products), out)
