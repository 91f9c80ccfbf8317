"""``hnets data prepare`` and ``hnets data stats``: argument parsing only."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["register"]

_DATASET_HELP = (
    "rotmnist (default), rotfashion, or folder:PATH for your own images "
    "(PATH/train/<class>/*.png, PATH/test/<class>/..., optional PATH/valid/...)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its subcommands."""
    data = subparsers.add_parser("data", help="prepare and inspect the datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True
    _add_prepare(sub)
    _add_stats(sub)


def _add_folder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image-size",
        type=int,
        help="folder:PATH only: side of the square images (default 28 for gray images, "
        "else the median side, rounded to a multiple of 4)",
    )
    p.add_argument("--channels", type=int, help="folder:PATH only: 1 (gray) or 3 (RGB)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="folder:PATH only: skip files that are not readable images (counted)",
    )


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="download or build a dataset (Rot-MNIST by default)",
        description=(
            "Prepare a dataset. Rot-MNIST: with --from-mnist/--from-idx (default: "
            "$HNETS_MNIST_DIR when set) build the stand-in from the MNIST idx files; with "
            "--file use a local zip; otherwise download the original archive (--url, --md5). "
            "Rot-Fashion-MNIST: built from the Fashion-MNIST idx files in --from-idx DIR, "
            "$HNETS_FASHION_DIR or /usr/share/datasets/fashion-mnist (Debian's "
            "dataset-fashion-mnist), else downloaded (--url: another base URL). "
            "folder:PATH: your images, converted once into the cache."
        ),
    )
    p.add_argument("--dataset", default="rotmnist", help=_DATASET_HELP)
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--from-idx", metavar="DIR", help="directory of the four idx files (MNIST or Fashion-MNIST)"
    )
    source.add_argument(
        "--from-mnist", metavar="DIR", help="directory of the four MNIST idx files (rotmnist)"
    )
    source.add_argument("--file", metavar="ZIP", help="a local mnist_rotation_new.zip or npz zip")
    source.add_argument("--url", help="download from this URL instead of the published one")
    p.add_argument(
        "--md5",
        help="expected md5 of the archive (default: the published one for the default URL; "
        "none for --url and --file)",
    )
    p.add_argument("--upright", action="store_true", help="build with unrotated train/valid")
    p.add_argument("--seed", type=int, default=0, help="seed of the build (default 0)")
    _add_folder_options(p)
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
    p.add_argument("--dataset", default="rotmnist", help=_DATASET_HELP)
    p.add_argument("--data-dir", help="where data lives (default: $HNETS_DATA or ~/.cache/hnets)")
    p.add_argument(
        "--variant",
        help="rotmnist: original, standin or upright; rotfashion: rotated or upright "
        "(default: the dataset's default)",
    )
    _add_folder_options(p)
    p.add_argument("--out", help="figure directory (default ./<dataset>-stats)")
    p.add_argument("--limit", type=int, help="use only the first N samples of each split")
    p.set_defaults(handler=_stats)


def _prepare(args: argparse.Namespace) -> int:
    from ..data.sources import FOLDER_OPTIONS, FolderSource, data_source
    from ..errors import HNetsError

    source = data_source(args.dataset)
    _refuse(args, tuple(n for n in FOLDER_OPTIONS if n not in source.option_names), "folder:PATH")
    if isinstance(source, FolderSource):
        path = _prepare_folder(args, source)
    elif source.name == "rotmnist":
        path = _prepare_rotmnist(args)
    else:
        if args.file or args.md5:
            raise HNetsError(f"--file and --md5 are for rotmnist, not {source.name}")
        if args.from_mnist:
            raise HNetsError(f"--from-mnist is for rotmnist; use --from-idx for {source.name}")
        path = _prepare_idx(source.spec, args)
    print(_summary(path))
    return 0


def _prepare_rotmnist(args: argparse.Namespace) -> Path:
    from ..data import DEFAULT_MD5, DEFAULT_URL, prepare_download, prepare_from_mnist
    from ..errors import HNetsError

    progress = not args.no_progress
    mnist_dir = args.from_mnist or args.from_idx
    if mnist_dir is None and not (args.file or args.url):
        mnist_dir = os.environ.get("HNETS_MNIST_DIR") or None
    if mnist_dir is not None:
        if args.md5:
            raise HNetsError("--md5 applies to a download or --file, not to --from-mnist")
        return prepare_from_mnist(
            mnist_dir,
            args.data_dir,
            seed=args.seed,
            upright=args.upright,
            force=args.force,
            progress=progress,
        )
    if args.upright:
        raise HNetsError("--upright builds the stand-in: use it with --from-mnist DIR")
    default_source = args.file is None and args.url is None
    md5 = args.md5 or (DEFAULT_MD5 if default_source else None)
    return prepare_download(
        args.data_dir,
        url=args.url or DEFAULT_URL,
        md5=md5,
        file=args.file,
        progress=progress,
        force=args.force,
    )


def _prepare_idx(spec: Any, args: argparse.Namespace) -> Path:
    """An idx-built dataset: local files in the registry's order, else a download."""
    from ..data.cache import is_prepared, resolve_data_dir
    from ..data.idx import download_idx, find_idx_dir
    from ..data.protocol import prepare_from_idx, rotated_variant

    progress = not args.no_progress
    variant = spec.upright_variant if args.upright else rotated_variant(spec)
    target = resolve_data_dir(args.data_dir) / spec.dir_name(variant)
    idx_dir = None if args.url else find_idx_dir(spec, args.from_idx)
    if idx_dir is None and (args.force or not is_prepared(target)):
        # a download from another base URL cannot be checked against the published md5s
        gz_md5 = {} if args.url else None
        idx_dir = download_idx(spec, args.data_dir, url=args.url, gz_md5=gz_md5, progress=progress)
    # without idx files the variant is prepared already: prepare_from_idx returns it
    # (or says that it was built with another seed) without reading any file
    return prepare_from_idx(
        idx_dir or target,
        args.data_dir,
        dataset=spec.name,
        seed=args.seed,
        upright=args.upright,
        force=args.force,
        progress=progress,
    )


def _prepare_folder(args: argparse.Namespace, source: Any) -> Path:
    from ..data import prepare_folder

    _refuse(args, ("from_idx", "from_mnist", "file", "url", "md5"), "rotmnist and rotfashion")
    if args.upright:
        raise ValueError("--upright is for rotmnist and rotfashion, not for a folder")
    return prepare_folder(
        source.path,
        args.data_dir,
        image_size=args.image_size,
        channels=args.channels,
        skip_bad=args.skip_bad,
        seed=args.seed,
        force=args.force,
        progress=not args.no_progress,
    )


def _refuse(args: argparse.Namespace, names: tuple[str, ...], where: str) -> None:
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None)]
    if given:
        raise ValueError(f"{', '.join(given)}: only for {where}")


def _stats(args: argparse.Namespace) -> int:
    from ..data import dataset_stats, format_stats, write_stats_figures
    from ..data.sources import FOLDER_OPTIONS, data_source

    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    source = data_source(args.dataset)
    _refuse(args, tuple(n for n in FOLDER_OPTIONS if n not in source.option_names), "folder:PATH")
    options = {name: getattr(args, name) for name in source.option_names}
    out = args.out or f"{source.manifest_dataset}-stats"
    where = {"variant": args.variant, "limit": args.limit, "dataset": args.dataset, **options}
    print(format_stats(dataset_stats(args.data_dir, **where)))
    paths = write_stats_figures(args.data_dir, out, **where)
    print()
    for path in paths:
        print(f"wrote {path}")
    return 0


def _summary(path: Path) -> str:
    from ..data.cache import SPLITS, manifest_title, read_manifest

    manifest = read_manifest(path)
    sizes = manifest["sizes"]
    counts = ", ".join(f"{split} {sizes[split]}" for split in SPLITS)
    title = manifest_title(manifest)
    valid_from = manifest.get("valid_from")
    note = f"; valid drawn from {valid_from}" if valid_from and valid_from != "folder" else ""
    classes = ", ".join(manifest.get("classes", []))
    return f"{title} ready in {path} ({counts}{note}); classes: {classes}"
