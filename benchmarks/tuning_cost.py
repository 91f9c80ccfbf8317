"""What measuring the dispatch costs a run, against the same calls once decided.

Usage::

    python benchmarks/tuning_cost.py [--width 1.2] [--batch 64] [--eval-batch 500]

With a fresh tuning cache (a temporary directory, whatever ``~/.cache/hnets`` holds),
this times :class:`hnets.models.HNetMNIST` the way ``hnets train`` uses it:

* **training**: the steps until every layer has decided (the real calls, forward and
  backward, are the trials: :func:`hnets.nn.dispatch.begin`) against as many steps
  once decided (their median);
* **inference**: the forwards until every layer has decided against as many
  forwards once decided.

The differences are what tuning costs a run on this machine, once per machine (the
decisions are cached). Prints the CPU, the thread count and the figures; ``--json``
for a machine-readable line. Never run it while anything else uses the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=1.2, help="(default 1.2, the recipe's)")
    parser.add_argument("--batch", type=int, default=64, help="training batch (default 64)")
    parser.add_argument("--eval-batch", type=int, default=500, help="(default 500)")
    parser.add_argument("--steps", type=int, default=5, help="decided steps timed, at least")
    parser.add_argument(
        "--drop-ratio",
        type=float,
        help="dispatch.DROP_RATIO for the run (default: the library's; inf: never drop)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HNETS_CACHE_DIR"] = cache  # a machine that has never tuned
        os.environ["HNETS_AUTOTUNE"] = "1"
        if args.drop_ratio is not None:
            from hnets.nn import dispatch

            dispatch.DROP_RATIO = args.drop_ratio
        result = measure(args)
    if args.json:
        print(json.dumps(result))
        return
    from hnets.bench import machine_description

    print(machine_description())
    print(
        f"training (batch {args.batch}): {result['train_steps']} steps until every layer "
        f"decided, {result['train_tuning_s']:.2f} s; a decided step {result['train_step_s']:.3f}"
        f" s (median): tuning costs {result['train_cost_s']:.2f} s"
    )
    print(
        f"inference (batch {args.eval_batch}): {result['infer_calls']} forwards until every "
        f"layer decided, {result['infer_tuning_s']:.2f} s; as many decided "
        f"{result['infer_decided_s']:.2f} s: tuning costs {result['infer_cost_s']:.2f} s"
    )
    print(f"together: {result['train_cost_s'] + result['infer_cost_s']:.2f} s")


def workload(
    width: float, batch: int, eval_batch: int
) -> tuple[Callable[[], float], Callable[[], float]]:
    """``HNetMNIST``'s training step and inference forward, as ``hnets train`` calls
    them, each returning its seconds; the one-time costs that are not tuning's (the
    native kernels' loading, first allocations) paid already, with the fixed table."""
    from hnets.models import HNetMNIST
    from hnets.nn import dispatch

    dispatch.clear_memory()
    torch.manual_seed(0)
    model = HNetMNIST(width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))

    def step() -> float:
        model.train()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - start

    with dispatch.autotuning(False):
        step()
        model.eval()
        with torch.inference_mode():
            model(torch.rand(eval_batch, 1, 28, 28))
    images = torch.rand(eval_batch, 1, 28, 28)

    def forward() -> float:
        model.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            model(images)
        return time.perf_counter() - start

    return step, forward


def until_decided(call: Callable[[], float]) -> list[float]:
    """``call()`` until no on-the-job trial is open (at least once); the calls' seconds."""
    from hnets.nn import dispatch

    seconds: list[float] = []
    while not seconds or dispatch.open_trials():
        seconds.append(call())
    return seconds


def measure(args: argparse.Namespace) -> dict[str, float | int]:
    step, forward = workload(args.width, args.batch, args.eval_batch)
    tuning_steps = until_decided(step)
    decided = statistics.median(step() for _ in range(max(args.steps, len(tuning_steps))))
    tuning = until_decided(forward)
    after = [forward() for _ in tuning]
    return {
        "train_steps": len(tuning_steps),
        "train_tuning_s": sum(tuning_steps),
        "train_step_s": decided,
        "train_cost_s": sum(tuning_steps) - len(tuning_steps) * decided,
        "infer_calls": len(tuning),
        "infer_tuning_s": sum(tuning),
        "infer_decided_s": sum(after),
        "infer_cost_s": sum(tuning) - sum(after),
    }


if __name__ == "__main__":
    main()
