"""Replay full dispatch trials under other rules: what dropping candidates early saves and costs.

Usage::

    python benchmarks/dispatch_replay.py [--runs 3] [--ratios 1.5,1.25,1.1]

Each run (a fresh process and tuning cache) tunes :class:`hnets.models.HNetMNIST` on
the job the way ``benchmarks/tuning_cost.py`` does (training at batch 64, inference at
batch 500), but lets every trial go the full :data:`~hnets.nn.dispatch.MAX_ROUNDS`
rounds with no candidate dropped, and records every call's time. The recorded calls
are then fed, in the order it asks for them, to the dispatch's own trial logic
(``dispatch._Trial``) with :data:`~hnets.nn.dispatch.DROP_RATIO` set to each ratio
(``inf``: never drop), and for each rule the script prints, averaged over the runs:

* **tuning excess**: what the calls the rule makes cost beyond the fastest candidate's
  time, in seconds (what tuning would cost a run);
* **loss**: how much slower the rule's choices are than the fastest candidates, as a
  share of the layers' time, where "fastest" is judged on the *other* runs' calls (a
  run's own noise does not grade its own choices);
* **changed**: signatures whose choice differs from the no-drop rule's.

Never run it while anything else uses the cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def collect(path: str, width: float) -> None:
    """One run: every trial to MAX_ROUNDS, no candidate dropped; every call recorded."""
    os.environ["HNETS_AUTOTUNE"] = "1"
    import torch
    import torch.nn.functional as F

    from hnets.models import HNetMNIST
    from hnets.nn import dispatch

    dispatch.MIN_ROUNDS = dispatch.MAX_ROUNDS
    dispatch.DROP_RATIO = math.inf
    calls: dict[str, list[tuple[str, float]]] = {}
    real_end = dispatch.end

    def end(ticket: dispatch.Ticket) -> None:
        if not ticket.ended:
            calls.setdefault(ticket.key, []).append((ticket.name, dispatch._elapsed(ticket)))
        real_end(ticket)

    dispatch.end = end  # conv.py calls dispatch.end through the module
    torch.manual_seed(0)
    model = HNetMNIST(width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    images = torch.rand(500, 1, 28, 28)

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def forward() -> None:
        model.eval()
        with torch.inference_mode():
            model(images)

    with dispatch.autotuning(False):  # one-time costs that are not tuning's
        step()
        forward()
    for call in (step, forward):
        call()
        while dispatch.open_trials():
            call()
    Path(path).write_text(json.dumps(calls))


def replay(samples: dict[str, list[float]], ratio: float) -> tuple[str, dict[str, int]]:
    """The choice and the calls per candidate of the dispatch's trial under ``ratio``."""
    from hnets.nn import dispatch

    dispatch.DROP_RATIO = ratio
    trial = dispatch._Trial(list(samples))
    made = dict.fromkeys(samples, 0)
    while not trial.done():
        name = trial.next()
        trial.record(name, samples[name][made[name]])
        made[name] += 1
    return trial.leader(), made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ratios", default="1.5,1.25,1.1", help="besides inf (never drop)")
    parser.add_argument("--width", type=float, default=1.2, help="(default 1.2, the recipe's)")
    parser.add_argument("--collect", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collect:
        collect(args.collect, args.width)
        return
    ratios = [math.inf] + [float(r) for r in args.ratios.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp, f"run{i}.json")
            env = {**os.environ, "HNETS_CACHE_DIR": str(Path(tmp, f"cache{i}"))}
            cmd = [sys.executable, __file__, "--collect", str(out), "--width", str(args.width)]
            subprocess.run(cmd, env=env, check=True)
            recorded = json.loads(out.read_text())
            runs.append(
                {key: _by_candidate(calls) for key, calls in recorded.items()}  # fmt: skip
            )
    from hnets.bench import machine_description

    print(machine_description())
    print(f"{args.runs} runs of HNetMNIST(width={args.width}), full trials replayed:")
    for ratio in ratios:
        excess, loss, changed = [], [], 0
        for i, run in enumerate(runs):
            others = [r for j, r in enumerate(runs) if j != i] or [run]
            spent = best_total = lost = 0.0
            for key, samples in run.items():
                truth = {
                    name: statistics.median(t for r in others for t in r[key][name][1:])
                    for name in samples
                }
                best = min(truth.values())
                choice, made = replay(samples, ratio)
                spent += sum(n * (truth[name] - best) for name, n in made.items())
                lost += truth[choice] - best
                best_total += best
                changed += choice != replay(samples, math.inf)[0]
            excess.append(spent)
            loss.append(lost / best_total)
        rule = "never drop" if math.isinf(ratio) else f"drop at {ratio:g}x"
        print(
            f"  {rule}: tuning excess {statistics.mean(excess):.2f} s "
            f"({', '.join(f'{e:.2f}' for e in excess)}), loss {100 * statistics.mean(loss):.1f}%"
            f" of the layers' time, changed {changed} of {sum(len(r) for r in runs)} choices"
        )


def _by_candidate(calls: list[list]) -> dict[str, list[float]]:
    """``[(name, seconds), ...]`` in call order -> name: its calls' seconds (untimed first)."""
    out: dict[str, list[float]] = {}
    for name, seconds in calls:
        out.setdefault(name, []).append(seconds)
    return out


if __name__ == "__main__":
    main()
