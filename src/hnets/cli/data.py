"""``hnets data prepare`` and ``hnets data stats``: argument parsing only."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its subcommands."""
    data = subparsers.add_parser("data", help="prepare and inspect the Rot-MNIST data")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True
    _add_prepare(sub)
    _add_stats(sub)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="download Rot-MNIST, or build the offline stand-in from MNIST",
        description=(
            "Prepare Rot-MNIST. With --from-mnist (default: $HNETS_MNIST_DIR when set) build "
            "the stand-in from the MNIST idx files; with --file use a local zip; otherwise "
            "download the original archive (--url, --md5)."
        ),
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from-mnist", metavar="DIR", help="directory of the four MNIST idx files")
    source.add_argument("--file", metavar="ZIP", help="a local mnist_rotation_new.zip or npz zip")
    source.add_argument("--url", help="download from this URL instead of the published one")
    p.add_argument(
        "--md5",
        help="expected md5 of the archive (default: the published one for the default URL; "
        "none for --url and --file)",
    )
    p.add_argument("--upright", action="store_true", help="stand-in with unrotated train/valid")
    p.add_argument("--seed", type=int, default=0, help="seed of the stand-in (default 0)")
    p.add_argument("--data-dir", help="where data lives (default: $HNETS_DATA or ~/.cache/hnets)")
    p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_prepare)


def _add_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="print split sizes and class balance; write figures",
        description="Print per-split sample counts and class balance; write PNG figures.",
    )
    p.add_argument("--data-dir", help="where data lives (default: $HNETS_DATA or ~/.cache/hnets)")
    p.add_argument("--variant", choices=("original", "standin", "upright"))
    p.add_argument("--out", default="rotmnist-stats", help="figure directory (./rotmnist-stats)")
    p.add_argument("--limit", type=int, help="use only the first N samples of each split")
    p.set_defaults(handler=_stats)


def _prepare(args: argparse.Namespace) -> int:
    from ..data import DEFAULT_MD5, DEFAULT_URL, prepare_download, prepare_from_mnist
    from ..errors import HNetsError

    progress = not args.no_progress
    mnist_dir = args.from_mnist
    if mnist_dir is None and not (args.file or args.url):
        mnist_dir = os.environ.get("HNETS_MNIST_DIR") or None
    if mnist_dir is not None:
        if args.md5:
            raise HNetsError("--md5 applies to a download or --file, not to --from-mnist")
        path = prepare_from_mnist(
            mnist_dir,
            args.data_dir,
            seed=args.seed,
            upright=args.upright,
            force=args.force,
            progress=progress,
        )
    else:
        if args.upright:
            raise HNetsError("--upright builds the stand-in: use it with --from-mnist DIR")
        default_source = args.file is None and args.url is None
        md5 = args.md5 or (DEFAULT_MD5 if default_source else None)
        path = prepare_download(
            args.data_dir,
            url=args.url or DEFAULT_URL,
            md5=md5,
            file=args.file,
            progress=progress,
            force=args.force,
        )
    print(_summary(path))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ..data import dataset_stats, ensure_dataset, format_stats, write_stats_figures

    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    vdir = ensure_dataset(args.data_dir, args.variant)
    print(format_stats(dataset_stats(vdir, limit=args.limit)))
    paths = write_stats_figures(vdir, args.out, limit=args.limit)
    print()
    for path in paths:
        print(f"wrote {path}")
    return 0


def _summary(path: Path) -> str:
    from ..data.cache import SPLITS, read_manifest

    sizes = read_manifest(path)["sizes"]
    counts = ", ".join(f"{split} {sizes[split]}" for split in SPLITS)
    return f"Rot-MNIST ready in {path} ({counts})"
