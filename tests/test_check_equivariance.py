"""check_equivariance: any module, images or harmonic maps in, logits, maps or harmonic maps out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import hnets
from hnets.equivariance import EquivarianceRow, check_equivariance, format_rows


def _smooth(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth images inside a disc (rotations at other angles then lose nothing at the border)."""
    torch.manual_seed(seed)
    x = torch.randn(batch * channels, 1, size, size, dtype=torch.float64)
    g = torch.exp(-(torch.arange(-6, 7, dtype=torch.float64) ** 2) / (2 * 1.5**2))
    g = (g / g.sum()).view(1, 1, 1, -1)
    x = F.conv2d(F.conv2d(x, g, padding=(0, 6)), g.transpose(-1, -2), padding=(6, 0))
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    x = x * ((r.view(-1, 1) ** 2 + r.view(1, -1) ** 2) <= (size / 2 - 3) ** 2)
    return x.view(batch, channels, size, size)


def _models() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    x = _smooth(2, 1, 28)
    dense = hnets.HNet(in_channels=1, num_classes=2, channels=(3, 4), depth=1, head="dense")
    conv = hnets.HConv2d(1, 2, 5, max_order=2, in_max_order=0)
    return {
        "logits": (hnets.HNetMNIST().double(), x),
        "per-pixel": (dense.double(), x),
        "harmonic": (conv.double(), hnets.lift(x)),
    }


@pytest.mark.parametrize("kind", ["logits", "per-pixel", "harmonic"])
def test_quarter_turns_are_exact_and_other_angles_bounded(kind):
    model, x = _models()[kind]
    model.train()
    rows = check_equivariance(model, x, angles=(90, 180, 270, -90, 30, 45))
    assert model.training  # the mode is restored
    outputs = {"logits": {"logits"}, "per-pixel": {"per-pixel"}}.get(
        kind, {"magnitudes", "harmonic"}
    )
    assert {r.output for r in rows} == outputs
    assert len(rows) == 6 * len(outputs)
    for row in rows:
        assert row.exact == (row.angle % 90 == 0)
        assert row.error < (1e-12 if row.exact else 0.3), row
    assert "exact" in str(rows[0]) and format_rows(rows).count("\n") == len(rows)


def test_a_module_that_is_not_equivariant_shows_it():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 2, 3, padding=1).double()
    rows = check_equivariance(conv, _smooth(2, 1, 16), angles=(90,))
    assert rows == [EquivarianceRow(90.0, "per-pixel", rows[0].error, True)]
    assert rows[0].error > 0.1


def test_a_quarter_turn_by_resampling_agrees_with_the_exact_one():
    """The resampled rotation turns the same way as torch.rot90 (same sign convention)."""
    x = _smooth(1, 1, 21)
    from hnets.equivariance import _turn_maps

    exact = _turn_maps(x, math.pi / 2, 1)
    resampled = _turn_maps(x, math.pi / 2, None)
    torch.testing.assert_close(resampled, exact, atol=1e-9, rtol=0)


def test_bad_inputs_and_outputs_are_named():
    with pytest.raises(ValueError, match="images"):
        check_equivariance(torch.nn.Identity(), torch.rand(2, 3))
    with pytest.raises(ValueError, match="output"):
        check_equivariance(torch.nn.Flatten(0), torch.rand(2, 1, 4, 4), angles=(90,))
