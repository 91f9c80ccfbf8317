"""Where an H-Net's channels go, and what each layout costs: timed side by side.

Usage::

    python benchmarks/channel_layouts.py [--layouts 10,19,38 8,20,40 ...] [--batch 64]

``HNetMNIST`` has three stages, at 28x28, 14x14 and 7x7 (``channels=(c1, c2, c3)``).
A channel in the first stage costs about 4x the arithmetic of one in the second and
16x one in the third, for fewer parameters, so two layouts of about the same size
can differ a lot in speed. This times the training step (SGD with momentum, as
``hnets bench``) and inference of each layout interleaved in one process
(:func:`hnets.bench.compare_models`) and prints parameters and ratios to the first
layout (by default the recipe's: ``width=1.2`` of ``(8, 16, 32)`` = ``(10, 19, 38)``).
Never run it while anything else uses the cores.
"""

from __future__ import annotations

import argparse

import torch

import hnets
from hnets.bench import compare_models, machine_description

DEFAULT_LAYOUTS = ["10,19,38", "8,16,32", "8,20,40", "8,24,36", "12,16,40"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", nargs="+", default=DEFAULT_LAYOUTS, metavar="C1,C2,C3")
    parser.add_argument("--batch", type=int, default=64, help="(default 64, the recipe's)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    models = {}
    for layout in args.layouts:
        channels = [int(c) for c in layout.split(",")]
        torch.manual_seed(0)
        models[layout] = hnets.build_model("hnet", channels=channels)
    print(f"{machine_description()}; {torch.get_num_threads()} threads; batch {args.batch}")
    timings = compare_models(models, batch=args.batch, repeats=args.repeats)
    train = {t.name: t for t in timings["train"]}
    infer = {t.name: t for t in timings["inference"]}
    print("| channels | parameters | training step (ms) | ratio | inference (ms) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for layout, model in models.items():
        t, i = train[layout], infer[layout]
        print(
            f"| {layout} | {hnets.count_parameters(model):,} | {1e3 * t.median_s:.0f} "
            f"| {t.ratio:.2f} | {1e3 * i.median_s:.1f} | {i.ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
