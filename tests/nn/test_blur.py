"""EvalBlur: a Gaussian low-pass of the input at inference, the identity in training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hnets.nn import EvalBlur, gaussian_blur, gaussian_kernel


@pytest.mark.parametrize("sigma", [0.3, 0.5, 1.0, 2.2])
def test_kernel_is_a_normalised_symmetric_gaussian_of_radius_three_sigma(sigma):
    k = gaussian_kernel(sigma, dtype=torch.float64)
    radius = max(1, math.ceil(3 * sigma))
    assert k.shape == (2 * radius + 1,)
    torch.testing.assert_close(k.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(k, k.flip(0))
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    torch.testing.assert_close(k / k[radius], torch.exp(-(r**2) / (2 * sigma**2)))


@pytest.mark.parametrize("sigma", [0, -0.5, float("nan"), float("inf"), "1"])
def test_kernel_refuses_a_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be"):
        gaussian_kernel(sigma)


def test_blur_is_the_2d_convolution_with_the_outer_product():
    x = torch.rand(2, 3, 11, 9, dtype=torch.float64)
    k = gaussian_kernel(0.7, dtype=torch.float64)
    k2 = torch.outer(k, k).expand(3, 1, -1, -1)
    expected = F.conv2d(x, k2, padding=k.numel() // 2, groups=3)
    torch.testing.assert_close(gaussian_blur(x, k), expected)


def test_blur_keeps_shape_dtype_memory_format_and_mass_inside():
    x = torch.zeros(1, 2, 16, 16)
    x[..., 6:10, 6:10] = torch.rand(1, 2, 4, 4)
    y = gaussian_blur(x.to(memory_format=torch.channels_last), gaussian_kernel(0.5))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.is_contiguous(memory_format=torch.channels_last)
    # far from the border the blur moves intensity around without losing any
    torch.testing.assert_close(y.sum(dim=(-2, -1)), x.sum(dim=(-2, -1)))


def test_blur_damps_the_finest_pattern_and_keeps_a_constant():
    checker = (torch.arange(16).view(-1, 1) + torch.arange(16)).remainder(2).float()
    x = checker.expand(1, 1, 16, 16)
    y = gaussian_blur(x, gaussian_kernel(0.5))
    inner = y[..., 3:-3, 3:-3]
    assert inner.max() - inner.min() < 0.5 * (x.max() - x.min())
    flat = gaussian_blur(torch.full((1, 1, 12, 12), 0.7), gaussian_kernel(0.5))
    torch.testing.assert_close(flat[..., 2:-2, 2:-2], torch.full((1, 1, 8, 8), 0.7))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_blur_commutes_with_quarter_turns(k):
    x = torch.rand(2, 1, 13, 13, dtype=torch.float64)
    kernel = gaussian_kernel(0.5, dtype=torch.float64)
    turned_then_blurred = gaussian_blur(torch.rot90(x, k, dims=(-2, -1)), kernel)
    blurred_then_turned = torch.rot90(gaussian_blur(x, kernel), k, dims=(-2, -1))
    torch.testing.assert_close(turned_then_blurred, blurred_then_turned, rtol=0, atol=1e-15)


def test_eval_blur_acts_in_eval_mode_only():
    module = EvalBlur(0.5)
    x = torch.rand(2, 1, 10, 10)
    assert module(x) is x  # training mode: the identity
    module.eval()
    torch.testing.assert_close(module(x), gaussian_blur(x, gaussian_kernel(0.5)))
    assert not torch.equal(module(x), x)
    off = EvalBlur(0.0).eval()
    assert off(x) is x
    assert "sigma=0.5, eval only" in repr(module)


def test_eval_blur_adds_nothing_to_the_state_dict():
    assert EvalBlur(0.5).state_dict() == {}


@pytest.mark.parametrize("sigma", [-1, float("nan"), float("inf")])
def test_eval_blur_refuses_a_bad_sigma(sigma):
    with pytest.raises(ValueError, match="eval_blur must be"):
        EvalBlur(sigma)


def test_eval_blur_scripts():
    scripted = torch.jit.script(EvalBlur(0.5).eval())
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(scripted(x), EvalBlur(0.5).eval()(x))
