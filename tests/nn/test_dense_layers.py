"""HUpsample, HSkip and the read-out modules: shapes, values, exact quarter turns."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hnets import lift, magnitude, rot90_harmonic
from hnets.nn import (
    HSkip,
    HUpsample,
    InvariantReadout,
    Lift,
    Magnitude,
    PixelReadout,
    harmonic_cat,
    invariant_readout,
)


def _harmonic(c: int, m: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(2, c, m, 2, h, w, dtype=torch.float64)


@settings(max_examples=30, deadline=None)
@given(
    side=st.integers(2, 15),
    scale=st.integers(1, 3),
    orders=st.integers(1, 3),
    k=st.integers(1, 3),
    mode=st.sampled_from(["bilinear", "bicubic"]),
)
def test_upsample_commutes_with_quarter_turns_for_every_size(side, scale, orders, k, mode):
    z = _harmonic(2, orders, side, side, seed=side)
    up = HUpsample(scale, mode=mode)
    expected = rot90_harmonic(up(z), k)
    torch.testing.assert_close(up(rot90_harmonic(z, k)), expected, rtol=1e-12, atol=1e-12)
    assert expected.shape[-2:] == (side * scale, side * scale)


@settings(max_examples=20, deadline=None)
@given(side=st.integers(2, 9), target=st.integers(2, 21), k=st.integers(1, 3))
def test_upsample_to_a_square_size_commutes_with_quarter_turns(side, target, k):
    z = _harmonic(1, 2, side, side, seed=target)
    up = HUpsample()
    got = up(rot90_harmonic(z, k), [target, target])
    torch.testing.assert_close(got, rot90_harmonic(up(z, [target, target]), k), rtol=0, atol=1e-12)


def test_upsample_interpolates_each_plane_alone():
    z = _harmonic(2, 2, 4, 5)
    up = HUpsample(2)(z)
    plane = torch.nn.functional.interpolate(z[:, 1, 1, 0:1], scale_factor=2, mode="bilinear")
    torch.testing.assert_close(up[:, 1, 1, 0:1], plane)
    with pytest.raises(ValueError, match="positive integer"):
        HUpsample(1.5)
    with pytest.raises(ValueError, match="mode"):
        HUpsample(2, mode="nearest")


def test_skip_adds_or_concatenates_and_checks_orders():
    a, b = _harmonic(2, 2, 5, 5), _harmonic(3, 2, 5, 5, seed=1)
    assert HSkip("concat")(a, b).shape == (2, 5, 2, 2, 5, 5)
    torch.testing.assert_close(HSkip("add")(a, a), 2 * a)
    torch.testing.assert_close(harmonic_cat(a, b), HSkip("concat")(a, b))
    with pytest.raises(ValueError, match="orders"):
        harmonic_cat(a, _harmonic(2, 3, 5, 5))
    with pytest.raises(ValueError, match="mode"):
        HSkip("mul")


def test_readout_modules_are_the_functions():
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(Lift()(x), lift(x))
    z = _harmonic(3, 2, 6, 6)
    torch.testing.assert_close(Magnitude()(z), magnitude(z))
    assert Magnitude(flatten=True)(z).shape == (2, 6, 6, 6)
    readout = InvariantReadout(3).double()
    torch.nn.init.normal_(readout.bias)
    torch.testing.assert_close(readout(z), invariant_readout(z, readout.bias))
    pixels = PixelReadout(3).double()
    pixels.bias.data = readout.bias.data.clone()
    dense = pixels(z)
    assert dense.shape == (2, 3, 6, 6)
    torch.testing.assert_close(dense.mean(dim=(-2, -1)), readout(z))
    torch.testing.assert_close(pixels(rot90_harmonic(z, 1)), torch.rot90(dense, 1, dims=(-2, -1)))
