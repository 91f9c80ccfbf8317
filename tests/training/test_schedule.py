"""The learning-rate schedules and the data order: pure functions of the settings and the step."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hnets.training import TrainConfig, epoch_order, lr_at, shard_positions


def test_schedules():
    steps = 10
    cosine = TrainConfig(epochs=10, lr=1.0, warmup_epochs=1)
    assert [lr_at(cosine, s, steps) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_at(cosine, 9, steps) == pytest.approx(1.0)
    assert lr_at(cosine, 99, steps) < 1e-3
    lrs = [lr_at(cosine, s, steps) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    step = dataclasses.replace(cosine, schedule="step", warmup_epochs=0)
    assert [lr_at(step, e * steps, steps) for e in (0, 4, 5, 7, 8, 9)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    constant = dataclasses.replace(cosine, schedule="constant")
    assert lr_at(constant, 50, steps) == 1.0 and lr_at(constant, 0, steps) == pytest.approx(0.1)
    onecycle = dataclasses.replace(cosine, schedule="onecycle")
    lrs = [lr_at(onecycle, s, steps) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) in (29, 30) and lrs[-1] < 1e-3


def test_the_data_stream_depends_only_on_seed_and_epoch():
    order, angles = epoch_order(0, 3, 100, augment=True)
    again, angles2 = epoch_order(0, 3, 100, augment=True)
    assert torch.equal(order, again) and torch.equal(angles, angles2)
    assert sorted(order.tolist()) == list(range(100))
    assert float(angles.min()) >= 0 and float(angles.max()) < 2 * math.pi
    assert not torch.equal(order, epoch_order(0, 4, 100, augment=True)[0])
    assert not torch.equal(order, epoch_order(1, 3, 100, augment=True)[0])
    assert epoch_order(0, 3, 100, augment=False)[1] is None


def test_quarter_turns_replace_a_fraction_of_the_angles_and_nothing_else():
    order, angles = epoch_order(2, 5, 4000, augment=True)
    # q = 0 is the stream as it always was: the permutation, then uniform angles
    generator = torch.Generator().manual_seed(2 * 1000 + 5)
    assert torch.equal(order, torch.randperm(4000, generator=generator))
    assert torch.equal(angles, torch.rand(4000, generator=generator) * (2 * math.pi))
    assert torch.equal(epoch_order(2, 5, 4000, augment=True, quarter_turns=0.0)[1], angles)
    order_q, angles_q = epoch_order(2, 5, 4000, augment=True, quarter_turns=0.3)
    assert torch.equal(order_q, order)  # the same samples in the same order
    turns = angles_q / (math.pi / 2)
    exact = (turns - turns.round()).abs() < 1e-6
    assert 0.25 < exact.float().mean().item() < 0.35
    assert torch.equal(angles_q[~exact], angles[~exact])  # the others keep their angle
    assert set(turns[exact].round().long().tolist()) == {0, 1, 2, 3}
    all_turns = epoch_order(2, 5, 4000, augment=True, quarter_turns=1.0)[1] / (math.pi / 2)
    assert torch.allclose(all_turns, all_turns.round(), atol=1e-6)


def test_quarter_turns_must_be_a_fraction():
    with pytest.raises(ValueError, match=r"quarter_turns must be in \[0, 1\]"):
        TrainConfig(quarter_turns=1.5).check()


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 2), (11, 2), (7, 3), (2, 4)])
def test_shards_cover_every_sample_with_equal_lengths(n, world):
    shards = [shard_positions(n, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert set(torch.cat(shards).tolist()) == set(range(n))
    assert len(torch.cat(shards)) == math.ceil(n / world) * world
