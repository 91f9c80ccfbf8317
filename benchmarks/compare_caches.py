"""Compare dispatch caches: do two ways of tuning (or two runs) choose alike, and how well?

Usage::

    python benchmarks/compare_caches.py A=cacheA1.json,cacheA2.json B=cacheB1.json,...

Each argument names a group (a way of tuning, a version, a machine state) and its
``autotune-*.json`` files (what ``HNETS_CACHE_DIR=... hnets tune`` leaves). For the
signatures that every file holds, it prints:

* how many choices each pair of files agrees on (within a group: the noise floor;
  across groups: whether the ways differ beyond it);
* the signatures where any file chose differently, with each scheme's mean time over
  all the files;
* per group, how much slower its chosen schemes are than the fastest, graded on
  those means (as a share of the fastest, averaged over signatures and files).

The files of one machine and ISA only: times are compared across them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+", metavar="NAME=FILE[,FILE...]")
    args = parser.parse_args()
    files: dict[str, dict] = {}
    group_of: dict[str, str] = {}
    for spec in args.groups:
        name, sep, paths = spec.partition("=")
        if not sep or not paths:
            sys.exit(f"compare_caches: expected NAME=FILE[,FILE...], got {spec!r}")
        for i, path in enumerate(paths.split(",")):
            try:
                decisions = json.loads(Path(path).read_text())["decisions"]
            except (OSError, ValueError, KeyError) as exc:
                sys.exit(f"compare_caches: {path}: not a dispatch cache ({exc})")
            label = f"{name}{i + 1}"
            files[label], group_of[label] = decisions, name
    keys = sorted(set.intersection(*(set(d) for d in files.values())))
    if not keys:
        sys.exit("compare_caches: no signature is in every file")
    print(f"{len(keys)} signatures in all {len(files)} files")
    for a, b in itertools.combinations(files, 2):
        same = sum(files[a][k]["choice"] == files[b][k]["choice"] for k in keys)
        print(f"  {a} vs {b}: {same} of {len(keys)} alike")
    loss: dict[str, list[float]] = {g: [] for g in group_of.values()}
    for key in keys:
        names = set.intersection(*(set(d[key]["seconds"]) for d in files.values()))
        mean = {n: statistics.mean(d[key]["seconds"][n] for d in files.values()) for n in names}
        best = min(mean.values())
        choices = {label: d[key]["choice"] for label, d in files.items()}
        for label, choice in choices.items():
            if choice in mean:
                loss[group_of[label]].append(mean[choice] / best - 1)
        if len(set(choices.values())) > 1:
            times = ", ".join(f"{n} {1e3 * t:.1f}" for n, t in sorted(mean.items()))
            print(f"  differs: {key}: {choices} (ms: {times})")
    for group, values in loss.items():
        print(f"  {group}: chosen schemes {100 * statistics.mean(values):.1f}% slower than the "
              "fastest (mean times of all files)")  # fmt: skip


if __name__ == "__main__":
    main()
