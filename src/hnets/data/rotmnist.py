"""Rot-MNIST (``mnist_rotation_new``, Larochelle et al. 2007): files, preparation, Dataset.

Two archive formats are understood, told apart by the zip's member names:

* the original ``mnist_rotation_new.zip`` (:data:`DEFAULT_URL`, md5
  :data:`DEFAULT_MD5`) with ``mnist_all_rotation_normalized_float_train_valid.amat``
  (12,000 lines) and ``mnist_all_rotation_normalized_float_test.amat`` (50,000
  lines), one image a line: 784 floats in ``[0, 1]`` then the label. The first
  five sixths of the train/valid file train, the last sixth validates (10,000 and
  2,000 for the real file);
* the Harmonic Networks repackaging: a zip of ``rotated_train.npz``,
  ``rotated_valid.npz`` and ``rotated_test.npz``, each with ``x`` float32
  ``(N, 784)`` and ``y`` integer labels ``(N,)``.

The .amat rows store each image *transposed* (column-major): reshaping a row to
28x28 gives the digit mirrored about its main diagonal. The loader transposes it
back, so every image it yields is upright (for the original data, "upright" up to
the random rotation the dataset applied). The npz rows are taken to be stored in
the same transposed order as the .amat rows they were converted from, and are
transposed the same way.

Parsers never unpickle: npz members are read by parsing the ``.npy`` header
and the raw buffer, and object arrays are refused.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import DataError
from .archive import DEFAULT_MAX_UNPACKED_BYTES, download, file_md5, safe_extract, zip_names
from .cache import (
    IMAGE_SIZE,
    SplitArrays,
    check_labels,
    check_split,
    is_prepared,
    resolve_data_dir,
    staging_dir,
    write_variant,
)
from .dataset import ImageDataset
from .locate import ensure_dataset, locate_variant, missing_data_message
from .registry import ROTMNIST_MD5, ROTMNIST_URL

__all__ = [
    "DEFAULT_URL",
    "DEFAULT_MD5",
    "AMAT_FILES",
    "NPZ_FILES",
    "RotMNIST",
    "parse_amat",
    "read_amat",
    "parse_npz",
    "read_npz",
    "prepare_download",
    "ensure_dataset",
    "locate_variant",
    "missing_data_message",
]

DEFAULT_URL = ROTMNIST_URL
DEFAULT_MD5 = ROTMNIST_MD5
#: Member names of the original archive: split -> file.
AMAT_FILES = {
    "train_valid": "mnist_all_rotation_normalized_float_train_valid.amat",
    "test": "mnist_all_rotation_normalized_float_test.amat",
}
#: Member names of the Harmonic Networks repackaging: split -> file.
NPZ_FILES = {
    "train": "rotated_train.npz",
    "valid": "rotated_valid.npz",
    "test": "rotated_test.npz",
}
_PIXELS = IMAGE_SIZE * IMAGE_SIZE
_AMAT_CHUNK = 2048  # rows converted to floats at a time
_PIXEL_TOLERANCE = 1e-4
_MAX_NPY_BYTES = 1 << 30


class RotMNIST(ImageDataset):
    """A prepared Rot-MNIST split as a map-style dataset of ``(image, label)``.

    Items are ``(image, label)``: ``image`` a float32 tensor ``(1, 28, 28)`` in
    ``[0, 1]`` (upright: row 0 at the top), ``label`` an ``int`` in 0-9. The whole
    split is held in memory (the 50,000-image test split is 157 MB). For the other
    datasets see :func:`hnets.data.load_dataset`; this is
    ``load_dataset("rotmnist", split, root=root, variant=variant, limit=limit)``.

    Args:
        root: the data directory (``None``: :func:`resolve_data_dir`), or a variant
            directory itself (one holding ``manifest.json``).
        split: ``train``, ``valid``, ``test`` or ``train+valid``.
        variant: ``original``, ``standin`` or ``upright``; ``None`` takes
            ``original`` if prepared, else ``standin``; missing data is built from
            ``$HNETS_MNIST_DIR`` when set, else :class:`DataError` says what to do
            (see :func:`hnets.data.ensure_dataset`).
        limit: keep only the first ``limit`` samples.

    Attributes:
        images: float32 ``(N, 1, 28, 28)``.
        labels: int64 ``(N,)``.
        angles: float32 ``(N,)`` radians, or ``None`` for the original data.
        variant, split: what was loaded; ``root``: the variant directory.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str,
        variant: str | None = None,
        limit: int | None = None,
    ) -> None:
        check_split(split)
        super().__init__(locate_variant(root, variant, dataset="rotmnist"), split, limit=limit)

    def __repr__(self) -> str:
        return (
            f"RotMNIST(variant={self.variant!r}, split={self.split!r}, n={len(self)}, "
            f"root={str(self.root)!r})"
        )


def parse_amat(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Parse the text of an .amat file (see the module docstring).

    Args:
        data: the whole file.
        name: how to call the file in error messages.

    Returns:
        ``images`` float32 ``(N, 28, 28)`` upright (the stored transposition undone),
        ``labels`` int64 ``(N,)``.

    Raises:
        DataError: a line without exactly 785 numbers, a value that is not a number,
            a pixel outside ``[0, 1]``, a label that is not an integer in 0-9.
    """
    return _parse_amat_lines(data.splitlines(), name)


def read_amat(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read an .amat file line by line (see :func:`parse_amat`)."""
    try:
        with open(path, "rb") as fh:
            return _parse_amat_lines(fh, str(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def parse_npz(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Parse an npz file with arrays ``x`` (N, 784) float and ``y`` (N,) integer labels.

    Never unpickles. The rows of ``x`` are taken to be stored transposed like the
    .amat rows they were converted from, and are transposed back.

    Returns:
        ``images`` float32 ``(N, 28, 28)`` upright, ``labels`` int64 ``(N,)``.

    Raises:
        DataError: not an npz, missing keys, wrong shapes or dtypes, bad values.
    """
    arrays = _read_npz_members(data, name)
    x, y = arrays["x"], arrays["y"]
    if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != _PIXELS:
        raise DataError(f"{name}: x must be float (N, {_PIXELS}), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{name}: y must be ({x.shape[0]},) to match x, got {y.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{name}: no images")
    labels = check_labels(y, name, "y")
    images = _check_pixels(x.astype(np.float32), name)
    return _untranspose(images), labels


def read_npz(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read an npz file (see :func:`parse_npz`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_npz(data, str(path))


def prepare_download(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    url: str = DEFAULT_URL,
    md5: str | None = DEFAULT_MD5,
    file: str | os.PathLike[str] | None = None,
    progress: bool = True,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    force: bool = False,
) -> Path:
    """Prepare the real Rot-MNIST (variant ``original``) from a download or a local zip.

    The download goes to ``<data_dir>/downloads/`` (atomically, md5-checked, reused
    next time when its md5 matches); the archive is extracted safely into a
    temporary directory, parsed, and the arrays are published as
    ``<data_dir>/rotmnist-original``.

    Args:
        data_dir: where data lives (see :func:`resolve_data_dir`).
        url: where to download the archive from (ignored when ``file`` is given).
        md5: expected md5 of the archive, or ``None`` to skip the check. The default
            is the published checksum of ``mnist_rotation_new.zip``; pass ``None``
            (or its own checksum) for a repackaged npz archive.
        file: a local zip in either format, instead of downloading.
        progress: show progress bars.
        max_unpacked_bytes: cap on what the archive may unpack to.
        force: rebuild even if the variant is already prepared.

    Returns:
        The variant directory.
    """
    root = resolve_data_dir(data_dir)
    target = root / "rotmnist-original"
    if not force and is_prepared(target):
        return target
    created = _missing_dirs(root)
    try:
        archive, source = _obtain_archive(root, url, md5, file, progress)
        fmt = _detect_format(zip_names(archive), archive)
        with staging_dir(root, "original") as staging:
            unpacked = staging / "unpacked"
            files = safe_extract(archive, unpacked, max_bytes=max_unpacked_bytes)
            splits = _parse_archive(fmt, files, archive)
            shutil.rmtree(unpacked)
            info = {"source": {**source, "format": fmt}, "seed": None, "protocol": fmt}
            return write_variant(root, "original", splits, info, staging=staging, force=force)
    except BaseException:
        _remove_empty(created + [root / "downloads"])
        raise


def _parse_amat_lines(lines: Iterable[bytes], name: str) -> tuple[np.ndarray, np.ndarray]:
    blocks: list[np.ndarray] = []
    tokens: list[bytes] = []
    line_numbers: list[int] = []  # of the rows in ``tokens``, for error messages
    for lineno, line in enumerate(lines, 1):
        values = line.split()
        if not values:
            continue
        if len(values) != _PIXELS + 1:
            raise DataError(
                f"{name}: line {lineno} has {len(values)} values, expected {_PIXELS + 1} "
                "(784 pixels and a label)"
            )
        tokens.extend(values)
        line_numbers.append(lineno)
        if len(line_numbers) == _AMAT_CHUNK:
            blocks.append(_to_floats(tokens, name, line_numbers))
            tokens, line_numbers = [], []
    if tokens:
        blocks.append(_to_floats(tokens, name, line_numbers))
    if not blocks:
        raise DataError(f"{name}: no images")
    table = np.concatenate(blocks).reshape(-1, _PIXELS + 1)
    labels = check_labels(table[:, -1], name, "label")
    images = _check_pixels(table[:, :-1].astype(np.float32), name)
    return _untranspose(images), labels


def _to_floats(tokens: list[bytes], name: str, line_numbers: list[int]) -> np.ndarray:
    try:
        return np.array(tokens, dtype=np.float64)
    except (ValueError, OverflowError):
        pass
    for i, token in enumerate(tokens):
        try:
            np.float64(token)
        except (ValueError, OverflowError):
            shown = token[:20].decode("ascii", "replace")
            lineno = line_numbers[i // (_PIXELS + 1)]
            raise DataError(f"{name}: line {lineno}: {shown!r} is not a number") from None
    raise DataError(f"{name}: values that are not numbers near line {line_numbers[0]}")


def _check_pixels(pixels: np.ndarray, name: str) -> np.ndarray:
    """``pixels`` (N, 784) float32; must lie in [0, 1] (tiny rounding is clipped)."""
    finite = np.isfinite(pixels)
    low = pixels < -_PIXEL_TOLERANCE
    high = pixels > 1.0 + _PIXEL_TOLERANCE
    bad = np.flatnonzero((~finite | low | high).any(axis=1))
    if bad.size:
        row = pixels[bad[0]]
        value = row[~np.isfinite(row) | (row < -_PIXEL_TOLERANCE) | (row > 1 + _PIXEL_TOLERANCE)][0]
        raise DataError(f"{name}: image {int(bad[0])} has pixel value {value} outside [0, 1]")
    return np.clip(pixels, 0.0, 1.0, out=pixels)


def _untranspose(pixels: np.ndarray) -> np.ndarray:
    """Stored rows are column-major 28x28 images: ``(N, 784)`` -> upright ``(N, 28, 28)``."""
    images = pixels.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 1)
    return np.ascontiguousarray(images, dtype=np.float32)


def _read_npz_members(data: bytes, name: str) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{name}: not an npz file ({exc})") from None
    with zf:
        infos = {info.filename: info for info in zf.infolist()}
        out = {}
        for key in ("x", "y"):
            info = infos.get(f"{key}.npy")
            if info is None:
                keys = sorted(n.removesuffix(".npy") for n in infos)
                raise DataError(f"{name}: missing array {key!r} (has {keys})")
            if info.file_size > _MAX_NPY_BYTES:
                raise DataError(f"{name}: array {key!r} is larger than {_MAX_NPY_BYTES} bytes")
            out[key] = _parse_npy(_read_member(zf, info, name), f"{name}[{key}]")
    return out


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    try:
        with zf.open(info) as fh:
            return fh.read(_MAX_NPY_BYTES + 1)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        raise DataError(f"{name}: corrupt member {info.filename!r} ({exc})") from None


def _parse_npy(raw: bytes, name: str) -> np.ndarray:
    """Parse ``.npy`` bytes without ``np.load``: header first, then the raw buffer."""
    fp = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except (ValueError, SyntaxError, TypeError, EOFError, OverflowError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: not a valid .npy array ({_first_line(exc)})") from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize == 0:
        raise DataError(f"{name}: unsupported dtype {dtype} (only numbers; never pickles)")
    count = math.prod(shape)
    available = len(raw) - fp.tell()
    if available != count * dtype.itemsize:
        raise DataError(
            f"{name}: shape {shape} needs {count * dtype.itemsize} bytes of data, found {available}"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=fp.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _obtain_archive(
    root: Path,
    url: str,
    md5: str | None,
    file: str | os.PathLike[str] | None,
    progress: bool,
) -> tuple[Path, dict[str, Any]]:
    if file is not None:
        archive = Path(file).expanduser()
        if not archive.is_file():
            raise DataError(f"{archive}: file not found")
        digest = file_md5(archive)
        if md5 is not None and digest != md5.lower():
            raise DataError(
                f"{archive}: md5 {digest}, expected {md5} (pass md5=None / omit --md5 to skip)"
            )
        return archive, {"kind": "file", "file": str(archive.resolve()), "md5": digest}
    name = PurePosixPath(url.split("?", 1)[0]).name or "rotmnist.zip"
    hint = (
        " Offline? Build the stand-in with `hnets data prepare --from-mnist DIR` (MNIST idx "
        f"files; or set HNETS_MNIST_DIR), or fetch {url} by hand and run `hnets data prepare "
        f"--file FILE`; --data-dir DIR (or HNETS_DATA) chooses where data lives (now {root})."
    )
    archive = download(url, root / "downloads" / name, md5=md5, progress=progress, hint=hint)
    return archive, {"kind": "download", "url": url, "md5": file_md5(archive)}


def _detect_format(names: list[str], archive: Path) -> str:
    basenames = {PurePosixPath(n.replace("\\", "/")).name for n in names}
    if set(AMAT_FILES.values()) <= basenames:
        return "amat"
    if set(NPZ_FILES.values()) <= basenames:
        return "npz"
    raise DataError(
        f"{archive}: neither the mnist_rotation_new .amat files nor "
        f"rotated_{{train,valid,test}}.npz found (members: {sorted(basenames)[:8]})"
    )


def _parse_archive(fmt: str, files: list[Path], archive: Path) -> dict[str, SplitArrays]:
    found: dict[str, Path] = {}
    wanted = set(AMAT_FILES.values()) | set(NPZ_FILES.values())
    for path in files:
        if path.name in wanted:
            if path.name in found:
                raise DataError(f"{archive}: {path.name} appears twice")
            found[path.name] = path
    if fmt == "npz":
        return {split: SplitArrays(*read_npz(found[member])) for split, member in NPZ_FILES.items()}
    images, labels = read_amat(found[AMAT_FILES["train_valid"]])
    n_valid = labels.shape[0] // 6  # 2,000 of the 12,000, as by convention
    if n_valid == 0:
        raise DataError(f"{archive}: too few train/valid images ({labels.shape[0]}) to split")
    n_train = labels.shape[0] - n_valid
    test_images, test_labels = read_amat(found[AMAT_FILES["test"]])
    return {
        "train": SplitArrays(images[:n_train], labels[:n_train]),
        "valid": SplitArrays(images[n_train:], labels[n_train:]),
        "test": SplitArrays(test_images, test_labels),
    }


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(dirs: list[Path]) -> None:
    for path in sorted(set(dirs), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
