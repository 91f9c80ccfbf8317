"""Two versions of hnets timed side by side in one run: ``hnets bench --only models``.

Usage::

    python benchmarks/before_after.py BEFORE [AFTER] [--rounds N] [--autotune]

``BEFORE`` and ``AFTER`` are git revisions (``AFTER`` defaults to the working tree).
Each is exported (``git archive``) to a temporary directory and run in its own process
with ``PYTHONPATH`` pointing at its ``src``, alternately and in ABBA order (before,
after, after, before, ...; ``--rounds`` pairs), so that a slow moment of the machine,
or being the first or second process of a pair, hits both alike.
Each process times the H-Net and the dense-equivalent CNN interleaved, as
``hnets bench`` does; the CNN is plain PyTorch and the same in both versions, so the
H-Net's time *relative to it* is compared as well as the absolute times.

Each version gets a fresh cache directory, so both run ``impl="auto"`` as on a machine
where ``hnets tune`` never ran. ``--autotune`` sets ``HNETS_AUTOTUNE=1`` for both: the
switch of revisions up to 81132aa, whose ``impl="auto"`` measured on the job (later ones
ignore it), so that such a revision can be compared as its users ran it.
Never run this while anything else uses the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def export_source(rev: str, into: Path) -> Path:
    """``src/`` of revision ``rev`` under ``into``; ``None``-like ``"."``: the working tree."""
    if rev == ".":
        return ROOT / "src"
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    target = into / rev.replace("/", "_")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def bench_once(
    src: Path, cache: Path, *, autotune: bool, repeats: int
) -> dict[str, dict[str, float]]:
    """One ``hnets bench --only models --json`` of the code in ``src``: ms per part and model.

    ``cache``: the version's own cache directory (its native build and tuning decisions;
    older versions name their builds by a hand-kept version that may not have changed).
    """
    env = dict(
        os.environ,
        PYTHONPATH=str(src),
        HNETS_CACHE_DIR=str(cache),
        HNETS_AUTOTUNE="1" if autotune else "0",  # read by revisions up to 81132aa only
    )
    out = subprocess.run(
        [sys.executable, "-m", "hnets", "bench", "--only", "models", "--json",
         "--repeats", str(repeats)],
        check=True, capture_output=True, text=True, env=env, cwd=src.parent,
    ).stdout  # fmt: skip
    report = json.loads(out)
    if "native kernels on" not in report["machine"]:
        print(f"  note: {src.parent.name}: {report['machine']}", flush=True)
    return {
        part: {row["name"]: row["median_ms"] for row in rows}
        for part, rows in report["models"].items()
    }


def summarise(runs: list[dict[str, dict[str, float]]], part: str) -> tuple[float, float]:
    """Median H-Net ms, and median H-Net time / the CNN's faster layout's, over runs."""
    hnet = [r[part]["HNetMNIST"] for r in runs]
    vs_cnn = [
        min(ms for name, ms in r[part].items() if name.startswith("dense-equivalent CNN"))
        / r[part]["HNetMNIST"]
        for r in runs
    ]
    return statistics.median(hnet), statistics.median(vs_cnn)


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default=".", help="default: the working tree")
    parser.add_argument("--rounds", type=int, default=3, help="before/after pairs")
    parser.add_argument("--repeats", type=int, default=7, help="samples per model per run")
    parser.add_argument(
        "--autotune", action="store_true", help="HNETS_AUTOTUNE=1 (revisions up to 81132aa)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = {v: export_source(v, Path(tmp)) for v in (args.before, args.after)}
        runs: dict[str, list] = {v: [] for v in sources}
        for i in range(args.rounds):
            # ABBA: each version goes first in every other round, so that whatever the
            # first or second process of a pair suffers falls on both alike
            order = list(sources.items()) if i % 2 == 0 else list(sources.items())[::-1]
            for version, src in order:
                cache = Path(tmp) / f"cache-{version.replace('/', '_')}"
                runs[version].append(
                    bench_once(src, cache, autotune=args.autotune, repeats=args.repeats)
                )
                train = runs[version][-1]["train"]["HNetMNIST"]
                infer = runs[version][-1]["inference"]["HNetMNIST"]
                print(f"round {i + 1} {version:>12s}: H-Net train {train:7.1f} ms, "
                      f"inference {infer:6.1f} ms", flush=True)  # fmt: skip
    print(f"\nmachine: {_machine()}")
    print(f"medians over {args.rounds} runs each (batch 46, "
          f"HNETS_AUTOTUNE={'1' if args.autotune else '0'}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}):")  # fmt: skip
    print(f"{'':14s} {'train ms':>9s} {'H-Net/CNN':>10s} {'infer ms':>9s} {'H-Net/CNN':>10s}")
    table = {}
    for version in runs:
        parts = [summarise(runs[version], part) for part in ("train", "inference")]
        table[version] = [*parts[0], *parts[1]]
        t, tr, i, ir = table[version]
        print(f"{version:>14s} {t:9.1f} {tr:9.3f}x {i:9.1f} {ir:9.3f}x")
    (tb, _, ib, _), (ta, _, ia, _) = table[args.before], table[args.after]
    print(f"{'after/before':>14s} {ta / tb:9.3f}  {'':10s} {ia / ib:9.3f}")
    print("(H-Net/CNN: the CNN's faster layout's time over the H-Net's, i.e. the H-Net's speed-up)")


if __name__ == "__main__":
    main()
