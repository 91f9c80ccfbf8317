"""The processes of a run: which device, which rank among how many, and Ctrl-C.

One process is rank 0 of a world of 1. Under ``torchrun`` (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK`` in the environment) every process joins the process group; only rank 0
logs and writes files.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import HNetsError

__all__ = ["World", "StopFlag", "resolve_device"]


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU; other names are checked."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HNetsError(f"device {name!r} asked for, but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise HNetsError(f"device {name!r} asked for, but MPS is not available")
    return device


@dataclass
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    device: torch.device
    rank: int = 0
    size: int = 1
    owns_group: bool = False

    @classmethod
    def start(cls, device_name: str) -> World:
        """Join the process group that ``torchrun`` describes in the environment, if any."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        device = resolve_device(device_name)
        if size <= 1 and not dist.is_initialized():
            return cls(device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        elif device.type != "cpu":
            raise HNetsError(f"distributed training runs on CUDA or the CPU, not {device.type}")
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(device, dist.get_rank(), dist.get_world_size(), owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flags: torch.Tensor) -> torch.Tensor:
        """Element-wise "true on any process" of a CPU bool tensor, in one all-reduce."""
        if self.size == 1:
            return flags
        # the maximum of 0/1 values is their OR; float64, as every backend reduces it
        t = flags.to(self._comm_device, torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.cpu() > 0

    def agree(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any."""
        return bool(self.any(torch.tensor([flag]))[0])

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class StopFlag:
    """Turns the first Ctrl-C (SIGINT) into a flag the loop checks at safe points.

    A second Ctrl-C raises ``KeyboardInterrupt`` at once. Outside the main thread
    (where signals cannot be caught) Ctrl-C keeps its usual behaviour.
    """

    def __init__(self) -> None:
        self.is_set = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, _signum: int, _frame: object) -> None:  # signal.signal calls it so
        if self.is_set:
            raise KeyboardInterrupt
        self.is_set = True
        print(
            "hnets: Ctrl-C: saving a checkpoint at the next safe point "
            "(press Ctrl-C again to stop at once)",
            file=sys.stderr,
        )
