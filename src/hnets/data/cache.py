"""Where prepared datasets live on disk, and how a prepared variant is written and read.

Layout: ``<data_dir>/<dataset>-<variant>/`` (e.g. ``rotmnist-standin``; see
:mod:`hnets.data.registry`) holds, for each split in ``train``, ``valid`` and
``test``, the files ``<split>_images.npy`` (float32 ``(N, H, W)`` for one channel,
as every Rot-MNIST build stores it, or ``(N, C, H, W)``; values in ``[0, 1]``),
``<split>_labels.npy`` (int64 ``(N,)``) and, for the variants built by rotating,
``<split>_angles.npy`` (float32 ``(N,)``, radians), plus ``manifest.json`` (dataset,
variant, class names, source, seed, sizes, the sha256 of every array file, creation
time, hnets version). The manifest is written last: a directory without a valid
manifest is not a dataset. Manifests written before datasets had names are
Rot-MNIST's.

A variant is built in a temporary directory next to its target and renamed into
place in one step, so a crash or a concurrent ``prepare`` never leaves a partial
dataset under the real name; when two builds race, the loser accepts the winner's
directory if it describes the same data. Loading never unpickles: arrays are read
with ``np.load(..., allow_pickle=False)`` and metadata is JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write, file_digest, read_json, write_json
from ..errors import DataError, HNetsError
from .registry import DATASETS, DIGITS

__all__ = [
    "FOLDER_DATASET",
    "manifest_classes",
    "manifest_title",
    "check_labels",
    "SPLITS",
    "ALL_SPLITS",
    "MANIFEST_NAME",
    "IMAGE_SIZE",
    "SplitArrays",
    "resolve_data_dir",
    "check_split",
    "staging_dir",
    "write_variant",
    "read_manifest",
    "is_prepared",
    "load_split",
    "verify_variant",
]

#: ``dataset`` and ``variant`` of a folder of the user's images in its manifest.
FOLDER_DATASET = "folder"
SPLITS = ("train", "valid", "test")
ALL_SPLITS = (*SPLITS, "train+valid")
MANIFEST_NAME = "manifest.json"
IMAGE_SIZE = 28
_FORMAT = 1
_FIELDS = ("images", "labels", "angles")
_DTYPES = {"images": "float32", "labels": "int64", "angles": "float32"}
_DIR_MODE, _FILE_MODE = 0o755, 0o644


@dataclass
class SplitArrays:
    """The arrays of one split.

    Attributes:
        images: float32 ``(N, H, W)`` (one channel) or ``(N, C, H, W)``, upright
            images in ``[0, 1]``.
        labels: int64 ``(N,)``, class indices.
        angles: float32 ``(N,)`` rotation angles in radians, or ``None`` when the
            angles are unknown (the original Rot-MNIST files do not record them).
    """

    images: np.ndarray
    labels: np.ndarray
    angles: np.ndarray | None = None

    @property
    def chw(self) -> np.ndarray:
        """The images as ``(N, C, H, W)`` (a view)."""
        return self.images[:, None] if self.images.ndim == 3 else self.images

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$HNETS_DATA``, else the user cache.

    The user cache is ``$XDG_CACHE_HOME/hnets`` (``~/.cache/hnets`` by default).
    Nothing is created.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("HNETS_DATA")
    if env:
        return Path(env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache_home).expanduser() / "hnets"


def check_split(split: str) -> str:
    """Return ``split`` if it names a known split, else raise :class:`DataError`."""
    if split not in ALL_SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {ALL_SPLITS}")
    return split


@contextlib.contextmanager
def staging_dir(data_dir: Path, name: str) -> Iterator[Path]:
    """A fresh temporary directory next to the target ``data_dir/<name>``; removed on exit.

    ``name`` is a target directory name (``rotmnist-standin``) or, as before datasets
    had names, a Rot-MNIST variant.

    When the directory has been published (renamed to the target) in the meantime,
    there is nothing left to remove.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        prefix = f".{name if '-' in name else f'rotmnist-{name}'}."
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=data_dir))
        tmp.chmod(_DIR_MODE)  # mkdtemp makes it private; a dataset is meant to be shared
    except OSError as exc:
        raise HNetsError(f"cannot create a directory in {data_dir}: {exc.strerror or exc}") from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_variant(
    data_dir: Path,
    variant: str,
    splits: Mapping[str, SplitArrays],
    info: Mapping[str, Any],
    *,
    staging: Path,
    force: bool = False,
    accept: Callable[[dict[str, Any]], bool] | None = None,
    dataset: str = "rotmnist",
    classes: tuple[str, ...] | list[str] | None = None,
    dir_name: str | None = None,
) -> Path:
    """Write ``splits`` into ``staging`` with a manifest, then publish it as the variant.

    Args:
        data_dir: the data directory; the variant goes to ``data_dir/<dataset>-<variant>``
            (or ``data_dir/<dir_name>``).
        variant: one of the dataset's variants (``folder`` for a folder).
        splits: arrays for each of ``train``, ``valid`` and ``test``.
        info: extra manifest entries (``source``, ``seed``, ``protocol``...).
        staging: an empty directory on the same file system (see :func:`staging_dir`).
        force: replace an existing variant.
        accept: decides whether an existing valid variant (found before or while
            publishing) holds the data asked for; without ``force`` an accepted one is
            kept and returned, a rejected one raises :class:`DataError`.
        dataset: a name in :data:`hnets.data.registry.DATASETS`, or ``folder``.
        classes: class names in label order (default: the registry's; required for
            folders).
        dir_name: the target directory's name (default ``<dataset>-<variant>``).

    Returns:
        The variant directory.
    """
    _check_dataset_variant(dataset, variant)
    if classes is None:
        if dataset == FOLDER_DATASET:
            raise ValueError("a folder dataset needs its class names")
        classes = DATASETS[dataset].classes
    if dir_name is None:
        dir_name = DATASETS[dataset].dir_name(variant)
    for split in SPLITS:
        check_labels(splits[split].labels, split, n_classes=len(classes))
    entries = {split: _save_split(staging, split, splits[split]) for split in SPLITS}
    manifest = {
        "format": _FORMAT,
        "dataset": dataset,
        "variant": variant,
        "classes": list(classes),
        "image_shape": list(splits["train"].chw.shape[1:]),
        **dict(info),
        "splits": entries,
        "sizes": {split: entries[split]["n"] for split in SPLITS},
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hnets_version": _hnets_version(),
    }
    write_json(staging / MANIFEST_NAME, manifest)
    for path in staging.iterdir():
        if path.is_file():
            path.chmod(_FILE_MODE)
    _fsync_dir(staging)
    return _publish(staging, data_dir / dir_name, force=force, accept=accept)


def read_manifest(vdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a variant's manifest; raise :class:`DataError` if it is not a dataset.

    Checks the structure of the manifest and that every array file it names exists
    with a plausible size; it does not hash the files (see :func:`verify_variant`).
    """
    vdir = Path(vdir)
    path = vdir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{vdir}: not a prepared dataset (no {MANIFEST_NAME})")
    try:
        manifest = read_json(path)
    except HNetsError as exc:
        raise DataError(str(exc)) from None
    problem = _manifest_problem(vdir, manifest)
    if problem:
        raise DataError(f"{path}: {problem}")
    return manifest


def manifest_title(manifest: Mapping[str, Any]) -> str:
    """How messages call a prepared dataset: the registry's title, or a folder's name."""
    spec = DATASETS.get(manifest.get("dataset", "rotmnist"))
    return spec.title if spec is not None else str(manifest.get("title") or FOLDER_DATASET)


def manifest_classes(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The class names a manifest records (Rot-MNIST's digits for older manifests)."""
    return tuple(manifest.get("classes") or DIGITS)


def is_prepared(vdir: str | os.PathLike[str]) -> bool:
    """Whether ``vdir`` holds a dataset with a valid manifest."""
    try:
        read_manifest(vdir)
    except DataError:
        return False
    return True


def verify_variant(vdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Hash every array file and compare with the manifest; return the manifest."""
    manifest = read_manifest(vdir)
    for split, entry in manifest["splits"].items():
        for field, meta in entry["files"].items():
            path = Path(vdir) / meta["file"]
            digest = file_digest(path)
            if digest != meta["sha256"]:
                raise DataError(f"{path}: checksum mismatch ({split} {field}); prepare again")
    return manifest


def load_split(
    vdir: str | os.PathLike[str],
    split: str,
    *,
    limit: int | None = None,
    fields: tuple[str, ...] = _FIELDS,
    manifest: dict[str, Any] | None = None,
) -> SplitArrays:
    """Load one split (``train+valid`` concatenates train and valid).

    Args:
        vdir: a prepared variant directory.
        split: one of :data:`ALL_SPLITS`.
        limit: keep only the first ``limit`` samples.
        fields: which arrays to read; images left out come back as an empty
            ``(0, H, W)`` array (for statistics that need only labels).
        manifest: the already-read manifest, to skip reading it again.

    Returns:
        :class:`SplitArrays` with writable, contiguous arrays.
    """
    check_split(split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    manifest = manifest if manifest is not None else read_manifest(vdir)
    parts = ("train", "valid") if split == "train+valid" else (split,)
    loaded = [_load_part(Path(vdir), manifest, part, fields) for part in parts]
    out = {}
    for field in _FIELDS:
        arrays = [part[field] for part in loaded]
        if any(a is None for a in arrays):
            out[field] = None
            continue
        joined = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        out[field] = np.array(joined[:limit])
    return SplitArrays(out["images"], out["labels"], out["angles"])


def _load_part(
    vdir: Path, manifest: dict[str, Any], split: str, fields: tuple[str, ...]
) -> dict[str, np.ndarray | None]:
    files = manifest["splits"][split]["files"]
    n = manifest["splits"][split]["n"]
    out: dict[str, np.ndarray | None] = {}
    for field in _FIELDS:
        if field not in files:
            out[field] = None
        elif field not in fields:
            out[field] = np.zeros((0, *files[field]["shape"][1:]), dtype=_DTYPES[field])
        else:
            out[field] = _load_array(vdir / files[field]["file"], files[field], n)
    return out


def _load_array(path: Path, meta: Mapping[str, Any], n: int) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); prepare the dataset again") from None
    if list(array.shape) != list(meta["shape"]) or str(array.dtype) != meta["dtype"]:
        raise DataError(
            f"{path}: holds {array.dtype} {tuple(array.shape)}, manifest says "
            f"{meta['dtype']} {tuple(meta['shape'])}; prepare the dataset again"
        )
    if array.shape[0] != n:
        raise DataError(f"{path}: {array.shape[0]} rows, expected {n}")
    return array


def _save_split(staging: Path, split: str, arrays: SplitArrays) -> dict[str, Any]:
    n = len(arrays)
    _check_split_arrays(split, arrays)
    files = {}
    for field in _FIELDS:
        array = getattr(arrays, field)
        if array is None:
            continue
        name = f"{split}_{field}.npy"
        array = np.ascontiguousarray(array, dtype=_DTYPES[field])
        with atomic_write(staging / name, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        files[field] = {
            "file": name,
            "sha256": file_digest(staging / name),
            "shape": list(array.shape),
            "dtype": _DTYPES[field],
        }
    return {"n": n, "files": files}


def _check_split_arrays(split: str, arrays: SplitArrays) -> None:
    n = len(arrays)
    if arrays.images.ndim not in (3, 4) or arrays.images.shape[0] != n:
        raise ValueError(f"{split}: images {arrays.images.shape} do not match {n} labels")
    if arrays.angles is not None and arrays.angles.shape != (n,):
        raise ValueError(f"{split}: angles {arrays.angles.shape} do not match {n} labels")


def _check_dataset_variant(dataset: str, variant: str) -> None:
    if dataset == FOLDER_DATASET:
        if variant != FOLDER_DATASET:
            raise DataError(f"a folder dataset has variant {FOLDER_DATASET!r}, not {variant!r}")
        return
    spec = DATASETS.get(dataset)
    if spec is None:
        raise DataError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    spec.check_variant(variant)


def check_labels(
    values: np.ndarray, name: str, what: str = "label", n_classes: int = 10
) -> np.ndarray:
    """``values`` as int64 class indices, or :class:`DataError` naming the first bad one.

    Accepts any numeric dtype whose values are whole numbers in ``0 .. n_classes - 1``
    (the .amat files store labels as floats); the message names the file or split
    (``name``), what the values are (``what``) and the sample.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "iuf":
        raise DataError(f"{name}: {what}s must be integers, got {values.dtype}")
    if values.ndim != 1:
        raise DataError(f"{name}: {what}s must be one-dimensional, got shape {values.shape}")
    as_float = values.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(as_float) | (as_float != np.round(as_float)))
    bad = bad if bad.size else np.flatnonzero((as_float < 0) | (as_float >= n_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{name}: {what} {values[i]} of sample {i} is not in 0-{n_classes - 1}")
    return as_float.astype(np.int64)


def _manifest_problem(vdir: Path, manifest: Any) -> str | None:
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        return f"not a format-{_FORMAT} hnets dataset manifest"
    try:
        _check_dataset_variant(manifest.get("dataset", "rotmnist"), manifest.get("variant"))
    except (DataError, TypeError) as exc:
        return str(exc)
    classes = manifest.get("classes", list(DIGITS))
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' must be a non-empty list of names"
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or any(s not in splits for s in SPLITS):
        return f"manifest must describe the splits {SPLITS}"
    for split in SPLITS:
        problem = _split_problem(vdir, splits[split])
        if problem:
            return f"split {split}: {problem}"
    return None


def _split_problem(vdir: Path, entry: Any) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("n"), int):
        return "no sample count"
    files = entry.get("files")
    if not isinstance(files, dict) or "images" not in files or "labels" not in files:
        return "images or labels missing"
    for field, meta in files.items():
        if field not in _FIELDS or not isinstance(meta, dict):
            return f"unexpected entry {field!r}"
        if any(key not in meta for key in ("file", "sha256", "shape", "dtype")):
            return f"{field}: incomplete entry"
        name = meta["file"]
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            return f"{field}: bad file name {name!r}"
        if not (vdir / name).is_file():
            return f"{name} is missing"
    return None


def _publish(
    staging: Path,
    target: Path,
    *,
    force: bool,
    accept: Callable[[dict[str, Any]], bool] | None,
) -> Path:
    """Rename ``staging`` to ``target``; cope with a target that exists or appears meanwhile."""
    for _ in range(5):
        if target.exists() or target.is_symlink():
            kept = _resolve_existing(target, force=force, accept=accept)
            if kept:
                return target
            force = False  # replaced once; a later winner is somebody else's build
        try:
            os.rename(staging, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue  # another build won the race: look at what it wrote
            raise HNetsError(f"cannot create {target}: {exc.strerror or exc}") from exc
        _fsync_dir(target.parent)
        return target
    raise DataError(f"{target}: could not publish the dataset (too many concurrent builds)")


def _resolve_existing(
    target: Path, *, force: bool, accept: Callable[[dict[str, Any]], bool] | None
) -> bool:
    """Decide about an existing target: True to keep it, False once moved out of the way."""
    try:
        manifest = read_manifest(target)
    except DataError:
        manifest = None
    if not force:
        if manifest is None:
            raise DataError(
                f"{target} exists but is not a valid dataset; use --force to replace it"
            )
        if accept is None or accept(manifest):
            return True
        raise DataError(f"{target} holds a different build ({_describe(manifest)}); use --force")
    trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(target, trash)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise HNetsError(f"cannot replace {target}: {exc.strerror or exc}") from exc
    if trash.is_symlink():
        trash.unlink()
    else:
        shutil.rmtree(trash, ignore_errors=True)
    return False


def _describe(manifest: Mapping[str, Any]) -> str:
    source = manifest.get("source", {})
    kind = source.get("kind", "?") if isinstance(source, dict) else "?"
    return f"source {kind}, seed {manifest.get('seed')}"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _hnets_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("hnets")
    except metadata.PackageNotFoundError:
        return "unknown"
