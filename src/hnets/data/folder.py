"""A folder of the user's labelled images (ImageFolder layout) as a prepared dataset.

Layout::

    PATH/train/<class>/<images>     required
    PATH/test/<class>/<images>      required
    PATH/valid/<class>/<images>     optional; else 1/6 of train is held out

Class names are the folder names under ``train/``, sorted; a label is the index in
that list. Names starting with ``.`` are ignored everywhere; files lying directly
in a split folder (next to the class folders, such as a README) are ignored too.
Every other file in a class folder, subfolders included, is an image: one that
cannot be decoded is an error unless ``skip_bad`` is given.

Every image becomes float32 ``(C, S, S)`` in ``[0, 1]`` by
:func:`hnets.images.load_image_as` (the whole image squashed to a square, no EXIF
rotation, alpha over black), so ``hnets predict`` can treat a new file exactly
like the training images.

A prepared folder lives in ``<data_dir>/folder-<name>-<key>/`` where ``key`` is a
sha256 over the options and every file's split, class, path and content: editing,
adding or removing a file, or asking for other options, gives a new directory;
asking again for the same gives the cached one without decoding anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .._io import file_digest
from ..errors import DataError, HNetsError
from .cache import (
    FOLDER_DATASET,
    SplitArrays,
    is_prepared,
    read_manifest,
    resolve_data_dir,
    staging_dir,
    write_variant,
)

__all__ = [
    "FOLDER_SPLITS",
    "VALID_FRACTION",
    "FolderScan",
    "scan_folder",
    "default_channels",
    "default_image_size",
    "prepare_folder",
]

#: The split folders read, in this order (``valid`` may be absent).
FOLDER_SPLITS = ("train", "valid", "test")
#: Share of each class's train images held out as validation when there is no ``valid/``.
VALID_FRACTION = 6  # one in six
_FORMAT_TAG = "hnets-folder-v1"  # change when the conversion or the split rule changes
_MIN_SIZE, _MAX_SIZE, _GRAY_SIZE = 16, 128, 28
_SKIPPED_LISTED = 5  # skipped files named in the manifest and the message
_LAYOUT = "expected PATH/train/<class>/<images> and PATH/test/<class>/<images>"


@dataclass(frozen=True)
class FolderScan:
    """The image files of a folder, found without opening any of them.

    Attributes:
        root: the folder, absolute.
        classes: class names (the ``train/`` subfolders), sorted; label = index.
        files: split -> ``(label, relative path)`` pairs, sorted by label then path;
            paths are POSIX-style and relative to ``root`` (``train/cat/1.png``).
            ``valid`` is present only when ``root/valid`` exists.
    """

    root: Path
    classes: tuple[str, ...]
    files: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    @property
    def has_valid(self) -> bool:
        """Whether the folder has its own ``valid/`` split."""
        return "valid" in self.files

    def paths(self) -> Iterator[tuple[str, int, str]]:
        """Every file as ``(split, label, relative path)``, in split, label, path order."""
        for split in FOLDER_SPLITS:
            for label, rel in self.files.get(split, []):
                yield split, label, rel


def scan_folder(path: str | os.PathLike[str]) -> FolderScan:
    """List a folder's classes and image files per split, checking the layout.

    Raises:
        DataError: ``path`` is missing or not a directory; ``train/`` or ``test/``
            is missing; a split folder has no class folders; a class folder holds
            no files; ``test/`` or ``valid/`` has a class that ``train/`` lacks.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such folder ({_LAYOUT})")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder ({_LAYOUT})")
    root = root.resolve()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root}: no {split}/ folder ({_LAYOUT})")
    classes = tuple(_class_dirs(root / "train"))
    labels = {name: index for index, name in enumerate(classes)}
    files: dict[str, list[tuple[int, str]]] = {}
    for split in FOLDER_SPLITS:
        split_dir = root / split
        if split == "valid" and not split_dir.is_dir():
            continue
        names = classes if split == "train" else _class_dirs(split_dir)
        for name in names:
            if name not in labels:
                raise DataError(
                    f"{split_dir / name}: class {name!r} is not in {root / 'train'} "
                    f"(its classes: {', '.join(classes)})"
                )
        entries = []
        for name in names:
            found = sorted(_files_under(split_dir / name, root))
            if not found:
                raise DataError(f"{split_dir / name}: class folder {name!r} holds no images")
            entries.extend((labels[name], rel) for rel in found)
        files[split] = entries
    return FolderScan(root, classes, files)


if TYPE_CHECKING:
    from ..images import ImageInfo


# hnets.images (PIL) loads when a folder is read, not with hnets
def image_info(path: Path) -> ImageInfo:
    """:func:`hnets.images.image_info`."""
    from .. import images

    return images.image_info(path)


def load_image_as(path: Path, *, size: int, channels: int) -> np.ndarray:
    """:func:`hnets.images.load_image_as`."""
    from .. import images

    return images.load_image_as(path, size=size, channels=channels)


def default_channels(infos: list[ImageInfo]) -> int:
    """1 when no image is in colour (see :class:`hnets.images.ImageInfo`), else 3."""
    return 3 if any(info.is_color for info in infos) else 1


def default_image_size(infos: list[ImageInfo], channels: int) -> int:
    """The image side a folder is prepared at when none is asked for.

    28 (MNIST's) for gray images; for colour ones the median of the images' longer
    sides, rounded half up to a multiple of 4 and clamped to ``[16, 128]``.
    """
    if channels == 1 or not infos:
        return _GRAY_SIZE
    median = float(np.median([max(info.width, info.height) for info in infos]))
    size = 4 * math.floor(median / 4 + 0.5)
    return int(min(max(size, _MIN_SIZE), _MAX_SIZE))


def prepare_folder(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Prepare a folder of labelled images (see the module docstring) as a dataset.

    Every image is converted by :func:`hnets.images.load_image_as` and the splits
    are stored as float32 ``(N, C, S, S)`` images in ``[0, 1]`` and int64 labels
    (no angles), ordered by class, then relative path. When the folder has no
    ``valid/``, each class gives ``round(n / 6)`` (half up) of its ``n`` train
    images, drawn with ``numpy.random.default_rng(seed)``, to the validation split
    (none when ``n`` is 1); the manifest's ``valid_from`` says which happened.

    The result is cached under a key over the requested options and every file's
    content (see the module docstring): a second call with the same folder and
    options hashes the files and returns the directory without decoding anything. A
    call naming both ``image_size`` and ``channels`` also finds a copy prepared with
    other requests that resolved to them (the defaults training took, say), so no
    caller needs to repeat what an earlier one asked for.

    Args:
        path: the folder (``PATH`` of ``--dataset folder:PATH``).
        data_dir: where data lives (see :func:`hnets.data.resolve_data_dir`).
        image_size: the side ``S`` of the stored images, at least 4; ``None``: 28
            for gray images, else the median longer side rounded to a multiple of 4
            and clamped to ``[16, 128]`` (:func:`default_image_size`).
        channels: 1 or 3; ``None``: 1 when every image is gray (modes 1, L, LA, I,
            I;16, F, or a palette of grays), else 3.
        skip_bad: skip files that cannot be decoded (not an image, truncated, over
            :data:`hnets.images.MAX_PIXELS` pixels) instead of failing; they are
            counted and the first few named in the manifest (``source.skipped``,
            ``source.skipped_files``) and, with ``progress``, on stderr.
        seed: seeds the validation hold-out (unused when there is a ``valid/``).
        force: rebuild even if the prepared directory exists.
        progress: a progress bar over decoding and one-line notices on stderr.

    Returns:
        The prepared directory ``<data_dir>/folder-<name>-<key[:12]>``.

    Raises:
        DataError: a bad layout (see :func:`scan_folder`), an undecodable file
            without ``skip_bad``, a class left with no images, or bad options.
            Nothing is written then.
    """
    image_size, channels = _checked_options(image_size, channels)
    scan = scan_folder(path)
    options = _key_options(scan, image_size, channels, skip_bad, seed)
    files = _file_records(scan)
    key = _content_key(files, options)
    root = resolve_data_dir(data_dir)
    dir_name = f"folder-{_slug(scan.root.name)}-{key[:12]}"
    target = root / dir_name

    def same_build(manifest: dict[str, Any]) -> bool:
        source = manifest.get("source")
        return isinstance(source, dict) and source.get("key") == key

    if not force and is_prepared(target) and same_build(read_manifest(target)):
        return target
    if not force and image_size is not None and channels is not None:
        found = _prepared_as(root, scan, files, options)
        if found is not None:
            return found
    skipped: list[str] = []
    image_size, channels = _size_and_channels(scan, image_size, channels, skip_bad, skipped)
    decoded = _decode_all(scan, image_size, channels, skip_bad, skipped, progress)
    splits, valid_from = _make_splits(scan, decoded, image_size, channels, int(seed))
    if progress:
        _print_notices(scan, splits, skipped, seed)
    info = _manifest_info(scan, key, options, skipped, seed, image_size, channels, valid_from)
    return _write_prepared(root, dir_name, scan, splits, info, force=force, accept=same_build)


def _key_options(
    scan: FolderScan, image_size: int | None, channels: int | None, skip_bad: bool, seed: int
) -> dict[str, Any]:
    """The requested options the cache key covers (the seed only when it is used)."""
    return {
        "image_size": image_size,
        "channels": channels,
        "skip_bad": bool(skip_bad),
        "seed": None if scan.has_valid else int(seed),
    }


def _write_prepared(
    root: Path,
    dir_name: str,
    scan: FolderScan,
    splits: dict[str, SplitArrays],
    info: dict[str, Any],
    *,
    force: bool,
    accept: Callable[[dict[str, Any]], bool],
) -> Path:
    """Publish ``splits`` as ``root / dir_name`` through a staging directory.

    See :func:`hnets.data.cache.write_variant`: ``accept`` says whether an existing
    directory holds this build (then, without ``force``, it is kept).
    """
    with staging_dir(root, dir_name) as staging:
        return write_variant(
            root,
            FOLDER_DATASET,
            splits,
            info,
            staging=staging,
            force=force,
            accept=accept,
            dataset=FOLDER_DATASET,
            classes=scan.classes,
            dir_name=dir_name,
        )


def _checked_options(image_size: int | None, channels: int | None) -> tuple[int | None, int | None]:
    """``image_size`` and ``channels`` as ints (``None`` kept); DataError when out of range."""
    if image_size is not None and image_size < 4:
        raise DataError(f"image size must be at least 4 pixels, got {image_size}")
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    return (
        None if image_size is None else int(image_size),
        None if channels is None else int(channels),
    )


def _size_and_channels(
    scan: FolderScan,
    image_size: int | None,
    channels: int | None,
    skip_bad: bool,
    skipped: list[str],
) -> tuple[int, int]:
    """The image side and channels to prepare at: those asked for, the rest from the images.

    Only when one is unset are the images' headers read (:func:`_read_infos`, which adds
    the files it skips to ``skipped``) for :func:`default_channels` and
    :func:`default_image_size`.
    """
    if channels is None or image_size is None:
        infos = _read_infos(scan, skip_bad, skipped)
        channels = channels or default_channels(infos)
        image_size = image_size or default_image_size(infos, channels)
    return image_size, channels


def _print_notices(
    scan: FolderScan, splits: dict[str, SplitArrays], skipped: list[str], seed: int
) -> None:
    """One line on stderr for a held-out validation split, one for skipped files."""
    if not scan.has_valid:
        n_valid = len(splits["valid"])
        print(
            f"hnets: {scan.root} has no valid/ folder: holding out {n_valid} train images "
            f"as validation (a stratified 1/{VALID_FRACTION} of each class, seed {seed})",
            file=sys.stderr,
        )
    if skipped:
        print(f"hnets: {_skipped_message(skipped)}", file=sys.stderr)


def _manifest_info(
    scan: FolderScan,
    key: str,
    options: dict[str, Any],
    skipped: list[str],
    seed: int,
    image_size: int,
    channels: int,
    valid_from: str,
) -> dict[str, Any]:
    """The manifest's description of a prepared folder: its source, options and protocol."""
    return {
        "title": scan.root.name,
        "source": {
            "kind": "folder",
            "path": str(scan.root),
            "key": key,
            "files": sum(1 for _ in scan.paths()),
            "skipped": len(skipped),
            "skipped_files": skipped[:_SKIPPED_LISTED],
        },
        "seed": int(seed),
        "image_size": int(image_size),
        "channels": int(channels),
        "valid_from": valid_from,
        "requested": {"image_size": options["image_size"], "channels": options["channels"]},
        "protocol": f"{_FORMAT_TAG}: hnets.images.load_image_as; see hnets.data.folder",
    }


def _class_dirs(split_dir: Path) -> list[str]:
    """The sorted, non-hidden subfolder names of a split folder; at least one."""
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(split_dir)
            if not entry.name.startswith(".") and entry.is_dir()
        )
    except OSError as exc:
        raise DataError(f"{split_dir}: cannot list ({exc.strerror or exc})") from None
    if not names:
        raise DataError(f"{split_dir}: no class folders ({_LAYOUT})")
    return names


def _files_under(class_dir: Path, root: Path) -> Iterator[str]:
    """Non-hidden files under ``class_dir`` (symlinked subfolders not followed), relative."""

    def fail(exc: OSError) -> None:
        raise DataError(f"{exc.filename or class_dir}: cannot list ({exc.strerror or exc})")

    for current, dirs, names in os.walk(class_dir, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            file = Path(current) / name
            if not name.startswith(".") and file.is_file():
                yield file.relative_to(root).as_posix()


def _file_records(scan: FolderScan) -> list[str]:
    """One JSON line per file: its split, class, relative path and content digest."""
    return [
        json.dumps([split, scan.classes[label], rel, file_digest(scan.root / rel)])
        for split, label, rel in scan.paths()
    ]


def _content_key(files: list[str], options: dict[str, Any]) -> str:
    """sha256 over the format tag, the options and every file's record (:func:`_file_records`)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([_FORMAT_TAG, options], sort_keys=True).encode())
    for record in files:
        digest.update(b"\n" + record.encode())
    return digest.hexdigest()


def _prepared_as(
    root: Path, scan: FolderScan, files: list[str], options: dict[str, Any]
) -> Path | None:
    """A prepared copy of this folder's content that resolved to ``options``, if any.

    The cache is keyed by the options asked for; a copy prepared with defaults (its
    image side or channels not given) has another key than a request naming the
    sizes they resolved to. Each candidate's key is recomputed from the options its
    manifest says were asked for: equal, it holds this very content, and it is the
    answer when its resolved side and channels are those of ``options``.
    """
    for candidate in sorted(root.glob(f"folder-{_slug(scan.root.name)}-*")):
        if not is_prepared(candidate):
            continue
        manifest = read_manifest(candidate)
        source, requested = manifest.get("source"), manifest.get("requested")
        if not isinstance(source, dict) or not isinstance(requested, dict):
            continue
        resolved = [manifest.get("image_size"), manifest.get("channels")]
        if resolved != [options["image_size"], options["channels"]]:
            continue
        asked = {**options, **{k: requested.get(k) for k in ("image_size", "channels")}}
        if source.get("key") == _content_key(files, asked):
            return candidate
    return None


def _attempt(
    scan: FolderScan, rel: str, skip_bad: bool, skipped: list[str], read: Callable[[Path], Any]
) -> Any:
    """``read(file)``; an undecodable file raises, or with ``skip_bad`` is noted and gives None."""
    try:
        return read(scan.root / rel)
    except HNetsError as exc:
        if not skip_bad:
            raise DataError(f"{exc}; --skip-bad (skip_bad=True) skips such files") from None
        if rel not in skipped:
            skipped.append(rel)
        return None


def _read_infos(scan: FolderScan, skip_bad: bool, skipped: list[str]) -> list[ImageInfo]:
    infos = []
    for _, _, rel in scan.paths():
        info = _attempt(scan, rel, skip_bad, skipped, image_info)
        if info is not None:
            infos.append(info)
    return infos


def _decode_all(
    scan: FolderScan,
    size: int,
    channels: int,
    skip_bad: bool,
    skipped: list[str],
    progress: bool,
) -> dict[str, np.ndarray | None]:
    """relative path -> float32 ``(C, S, S)``, or ``None`` for a skipped file."""
    todo = [rel for _, _, rel in scan.paths()]
    out: dict[str, np.ndarray | None] = {}
    for rel in tqdm(todo, desc=f"decoding {scan.root.name}", unit="img", disable=not progress):
        if rel in skipped:
            out[rel] = None
            continue
        out[rel] = _attempt(
            scan, rel, skip_bad, skipped, lambda f: load_image_as(f, size=size, channels=channels)
        )
    return out


def _make_splits(
    scan: FolderScan,
    decoded: dict[str, np.ndarray | None],
    size: int,
    channels: int,
    seed: int,
) -> tuple[dict[str, SplitArrays], str]:
    """The three splits, and where valid came from; raises for a class left empty.

    Empties ``decoded`` as it goes, so the images are held once, not twice.
    """
    kept: dict[str, list[tuple[int, str]]] = {}
    for split, entries in scan.files.items():
        kept[split] = [(label, rel) for label, rel in entries if decoded[rel] is not None]
        _check_no_empty_class(scan, split, entries, kept[split])
    if scan.has_valid:
        valid_from = "folder"
    else:
        kept["train"], kept["valid"] = _hold_out(kept["train"], len(scan.classes), seed)
        valid_from = f"train (stratified 1/{VALID_FRACTION}, seed {seed})"
    splits = {}
    for split in FOLDER_SPLITS:
        entries = kept[split]
        images = np.zeros((len(entries), channels, size, size), dtype=np.float32)
        for row, (_, rel) in enumerate(entries):
            images[row] = decoded.pop(rel)  # frees each image as it is copied
        labels = np.array([label for label, _ in entries], dtype=np.int64)
        splits[split] = SplitArrays(images, labels, None)
    return splits, valid_from


def _check_no_empty_class(
    scan: FolderScan,
    split: str,
    entries: list[tuple[int, str]],
    kept: list[tuple[int, str]],
) -> None:
    present = {label for label, _ in entries}
    for label in sorted(present - {label for label, _ in kept}):
        name = scan.classes[label]
        raise DataError(
            f"{scan.root / split / name}: class folder {name!r} holds no decodable images "
            "(every file was skipped)"
        )


def _hold_out(
    train: list[tuple[int, str]], n_classes: int, seed: int
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Move ``round(n / 6)`` (half up) of each class's ``n`` images to valid, seeded.

    Classes are visited in label order and each draws ``rng.permutation(n)`` (also
    when nothing is moved), so the choice depends only on the seed and the counts.
    Both lists keep the class, path order.
    """
    rng = np.random.default_rng(seed)
    by_class: list[list[tuple[int, str]]] = [[] for _ in range(n_classes)]
    for entry in train:
        by_class[entry[0]].append(entry)
    keep, valid = [], []
    for members in by_class:
        n = len(members)
        k = 0 if n <= 1 else math.floor(n / VALID_FRACTION + 0.5)
        chosen = set(rng.permutation(n)[:k].tolist())
        for index, entry in enumerate(members):
            (valid if index in chosen else keep).append(entry)
    return keep, valid


def _skipped_message(skipped: list[str]) -> str:
    shown = ", ".join(skipped[:_SKIPPED_LISTED])
    more = f" and {len(skipped) - _SKIPPED_LISTED} more" if len(skipped) > _SKIPPED_LISTED else ""
    return f"skipped {len(skipped)} files that are not decodable images: {shown}{more}"


def _slug(name: str) -> str:
    """``name`` made safe for a directory name: letters, digits, ``._-``; at most 40 chars."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:40].strip("-.")
    return slug or "images"
