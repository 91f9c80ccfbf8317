"""What a run measures and where it stands: running sums, epoch rows, the best epoch.

Also the vote the processes hold every few steps: did a loss turn NaN or infinite,
and did anyone press Ctrl-C? (:func:`vote`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .world import World

__all__ = ["Sums", "RunState", "vote", "epoch_row", "epoch_line"]


class Sums:
    """Running sums of the training loss and correct predictions, kept on the device.

    They stay tensors so that adding a step's loss does not wait for the device; they
    are read (:meth:`running`, :meth:`reduced`) only at the loop's safe points.
    """

    def __init__(
        self,
        device: torch.device,
        loss_sum: float = 0.0,
        correct: int = 0,
        count: int = 0,
        train_seconds: float = 0.0,
        earlier_seconds: float = 0.0,
    ) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.loss_sum = torch.tensor(loss_sum, dtype=dtype, device=device)
        self.correct = torch.tensor(correct, dtype=torch.long, device=device)
        self.count = count
        self.earlier_train_seconds = train_seconds
        self.earlier_seconds = earlier_seconds
        self.started = time.perf_counter()

    @classmethod
    def resume(cls, partial: Mapping[str, Any] | None, device: torch.device, world: World) -> Sums:
        """Fresh sums, or those of an interrupted epoch (held by rank 0 alone)."""
        if not partial or not world.is_main:
            return cls(device)
        return cls(
            device,
            partial["loss_sum"],
            partial["correct"],
            partial["count"],
            partial["train_seconds"],
            partial["seconds"],
        )

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        self.loss_sum += loss.to(self.loss_sum.dtype) * n
        self.correct += (logits.argmax(dim=1) == y).sum()
        self.count += n

    def running(self) -> str:
        """This process's loss and accuracy so far, for the progress bar."""
        if not self.count:
            return ""
        return (
            f"loss {self.loss_sum.item() / self.count:.4f} "
            f"acc {self.correct.item() / self.count:.2%}"
        )

    def reduced(self, world: World, epoch_started: float) -> dict[str, Any]:
        """Sums over all processes, plus the time spent so far (plain numbers)."""
        train_seconds = self.earlier_train_seconds + time.perf_counter() - self.started
        loss_sum, correct, count = world.sum(
            [self.loss_sum.item(), self.correct.item(), self.count]
        )
        return {
            "loss_sum": float(loss_sum),
            "correct": int(correct),
            "count": int(count),
            "train_seconds": train_seconds,
            "earlier_seconds": self.earlier_seconds,
            "seconds": self.earlier_seconds + time.perf_counter() - epoch_started,
        }


@dataclass
class RunState:
    """Where a run stands: what a checkpoint saves besides model and optimizer."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed in epoch ``epoch`` (non-zero after Ctrl-C)
    partial: dict[str, Any] | None = None  # sums of the interrupted epoch
    best: dict[str, Any] | None = None  # {"epoch", "valid_acc", "valid_loss"}
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def improves(self, valid: Mapping[str, float] | None) -> bool:
        """Whether an epoch with validation ``valid`` beats the best so far.

        Higher accuracy wins, then lower loss. Without validation (``train+valid``)
        every epoch does, so the last epoch's model is kept.
        """
        if valid is None or self.best is None:
            return True
        return (valid["accuracy"], -valid["loss"]) > (
            self.best["valid_acc"],
            -self.best["valid_loss"],
        )

    def end_epoch(self, row: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> None:
        """Record a finished epoch; ``best_state``: its weights if it is the new best."""
        if best_state is not None:
            self.best = {
                "epoch": row["epoch"],
                "valid_acc": row["valid_acc"],
                "valid_loss": row["valid_loss"],
            }
            self.best_state = best_state
        self.history.append(row)
        self.epoch, self.step, self.partial = row["epoch"], 0, None


def vote(
    recent: list[torch.Tensor], first_step: int, stop_asked: bool, world: World
) -> tuple[int | None, bool]:
    """Ask every process at once about the last few steps; the same answer everywhere.

    Args:
        recent: the losses of steps ``first_step, first_step + 1, ...`` on this process
            (as many on every process: they all check after the same steps).
        stop_asked: whether Ctrl-C was pressed here.

    Returns:
        ``(first bad step, stop)``: the first of those steps whose loss was NaN or
        infinite on any process (``None`` if none was), and whether Ctrl-C was pressed
        on any process.

    One all-reduce of ``len(recent) + 1`` flags, each "true on any process": a flag per
    step ("this step's loss was not finite") and a last one for Ctrl-C.
    """
    bad = ~torch.isfinite(torch.stack(recent).float()).cpu()
    flags = world.any(torch.cat([bad, torch.tensor([stop_asked])]))
    bad_steps = flags[:-1].nonzero()
    first_bad = first_step + int(bad_steps[0]) if len(bad_steps) else None
    return first_bad, bool(flags[-1])


def epoch_row(
    epoch: int,
    lr: float,
    train: Mapping[str, Any],
    valid: Mapping[str, float] | None,
    started: float,
) -> dict[str, Any]:
    """The ``metrics.jsonl`` line of epoch ``epoch`` (from 0) as a dict.

    ``train`` is :meth:`Sums.reduced`; ``valid`` the validation figures (``None``
    without validation); ``started`` when this process started the epoch.
    """
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": train["loss_sum"] / train["count"],
        "train_acc": train["correct"] / train["count"],
        "valid_loss": valid["loss"] if valid else None,
        "valid_acc": valid["accuracy"] if valid else None,
        "train_n": train["count"],
        "train_seconds": train["train_seconds"],
        "seconds": time.perf_counter() - started + train["earlier_seconds"],
        "images_per_s": train["count"] / max(train["train_seconds"], 1e-9),
    }


def epoch_line(row: Mapping[str, Any], epochs: int) -> str:
    """The one line printed per epoch."""
    line = (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.2%}"
    )
    if row["valid_acc"] is not None:
        line += f"  valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.2%}"
    return line + f"  lr {row['lr']:.2e}  {row['seconds']:.1f} s  {row['images_per_s']:.0f} img/s"
