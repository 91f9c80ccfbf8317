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
    from hnets.nn import dispatch

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # a sibling benchmark
    from tuning_cost import until_decided, workload

    dispatch.MIN_ROUNDS = dispatch.MAX_ROUNDS
    dispatch.DROP_RATIO = math.inf
    calls: dict[str, list[tuple[str, float]]] = {}
    real_end = dispatch.end

    def end(ticket: dispatch.Ticket) -> None:
        if not ticket.ended:
            calls.setdefault(ticket.key, []).append((ticket.name, dispatch._elapsed(ticket)))
        real_end(ticket)

    step, forward = workload(width, 64, 500)  # the fixed table: no trial recorded yet
    dispatch.end = end  # conv.py calls dispatch.end through the module
    until_decided(step)
    until_decided(forward)
    Path(path).write_text(json.dumps(calls))


def replay(samples: dict[str, list[float]], ratio: float) -> tuple[str, dict[str, int]]:
    """The choice and the calls per candidate of the dispatch's trial under ``ratio``."""
    from hnets.nn import dispatch

    dispatch.DROP_RATIO = ratio
    calls = {name: iter(seconds) for name, seconds in samples.items()}
    trial = dispatch._Trial(list(samples)).run(lambda name: next(calls[name]))
    made = {name: (name in trial.warm) + len(trial.samples[name]) for name in samples}
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
    # per run and signature, once: each scheme's time on the other runs' calls, and
    # the choice that dropping nothing makes
    graded = []
    for i, run in enumerate(runs):
        others = [r for j, r in enumerate(runs) if j != i] or [run]
        graded.append(
            {
                key: (
                    {
                        name: statistics.median(t for r in others for t in r[key][name][1:])
                        for name in samples
                    },
                    replay(samples, math.inf)[0],
                )
                for key, samples in run.items()
            }
        )
    for ratio in ratios:
        excess, loss, changed = [], [], 0
        for run, truths in zip(runs, graded, strict=True):
            spent = best_total = lost = 0.0
            for key, samples in run.items():
                truth, undropped = truths[key]
                best = min(truth.values())
                choice, made = replay(samples, ratio)
                spent += sum(n * (truth[name] - best) for name, n in made.items())
                lost += truth[choice] - best
                best_total += best
                changed += choice != undropped
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
