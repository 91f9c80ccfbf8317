"""The vote on NaN losses and Ctrl-C, and which epoch counts as the best."""

from __future__ import annotations

import math

import torch

from hnets.training.metrics import RunState, vote
from hnets.training.world import World


class OtherProcess:
    """A world of two processes, the other one's flags given: ``any`` ORs them in."""

    def __init__(self, flags: list[bool]) -> None:
        self.flags = torch.tensor(flags)

    def any(self, flags: torch.Tensor) -> torch.Tensor:
        return flags | self.flags


def losses(*values: float) -> list[torch.Tensor]:
    return [torch.tensor(v) for v in values]


def test_one_process_finds_its_first_bad_step():
    world = World(torch.device("cpu"))
    assert vote(losses(1.0, 2.0, 3.0), 20, False, world) == (None, False)
    assert vote(losses(1.0, math.nan, math.inf), 20, False, world) == (21, False)
    assert vote(losses(math.inf, 1.0), 0, True, world) == (0, True)


def test_every_process_hears_the_earliest_bad_step_and_any_ctrl_c():
    here = losses(1.0, 1.0, math.nan, 1.0)
    # the other process went bad one step earlier, and someone pressed Ctrl-C there
    assert vote(here, 10, False, OtherProcess([False, True, False, False, True])) == (11, True)
    # the other process is fine: this process's bad step stands; Ctrl-C here counts
    assert vote(here, 10, True, OtherProcess([False] * 5)) == (12, True)
    # a bad step elsewhere stops this process too, though its own losses are finite
    fine = losses(1.0, 1.0, 1.0, 1.0)
    assert vote(fine, 10, False, OtherProcess([False, False, False, True, False])) == (13, False)


def test_the_best_epoch_has_the_highest_accuracy_then_the_lowest_loss():
    state = RunState()
    assert state.improves({"accuracy": 0.5, "loss": 1.0})  # the first epoch always is
    state.best = {"epoch": 1, "valid_acc": 0.5, "valid_loss": 1.0}
    assert state.improves({"accuracy": 0.6, "loss": 2.0})
    assert state.improves({"accuracy": 0.5, "loss": 0.9})
    assert not state.improves({"accuracy": 0.5, "loss": 1.0})
    assert not state.improves({"accuracy": 0.4, "loss": 0.1})
    assert state.improves(None)  # train+valid: the last epoch is kept
