"""MNIST-like idx files: the format, the four files of a dataset, where to find them.

The idx format (LeCun et al.): two zero bytes, a type code (``0x08`` unsigned byte,
``0x09`` signed byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E``
float64), the number of dimensions, one big-endian uint32 per dimension, then the
big-endian data. Files may be gzipped; the well-known md5 of each *uncompressed*
file is checked, so a dataset is always built from the same images. Which files and
checksums belong to which dataset (MNIST, Fashion-MNIST) is
:mod:`hnets.data.registry`'s; :mod:`hnets.data.protocol` builds the rotated datasets
from them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .archive import download
from .cache import IMAGE_SIZE, check_labels, resolve_data_dir
from .registry import FASHION_SOURCE, MNIST_SOURCE, DatasetSpec, IdxSource

__all__ = [
    "MNIST_FILES",
    "FASHION_FILES",
    "MnistArrays",
    "parse_idx",
    "read_idx",
    "read_mnist_images",
    "read_mnist_labels",
    "load_mnist",
    "load_idx_files",
    "find_idx_dir",
    "download_idx",
    "idx_title",
]

#: The four MNIST files: name -> md5 of the uncompressed file (the well-known values).
MNIST_FILES = MNIST_SOURCE.files


#: The same for Fashion-MNIST.
FASHION_FILES = FASHION_SOURCE.files


_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


_MAX_IDX_BYTES = 1 << 30  # no MNIST file comes near; caps what a gzip may expand to


@dataclass
class MnistArrays:
    """The MNIST digits: images uint8 ``(N, 28, 28)``, labels int64 ``(N,)``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) idx file.

    Args:
        data: the whole file.
        name: how to call the file in error messages.

    Returns:
        The array, in native byte order, with the shape given by the header.

    Raises:
        DataError: bad magic number, unknown type code, truncated data or trailing bytes.
    """
    if len(data) < 4:
        raise DataError(f"{name}: truncated idx file ({len(data)} bytes, no header)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{name}: wrong magic number 0x{data[:4].hex()} (not an idx file)")
    ndim = data[3]
    if ndim == 0:
        raise DataError(f"{name}: idx header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated idx header ({len(data)} of {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[data[2]]
    expected = math.prod(shape) * dtype.itemsize
    body = len(data) - header
    if body < expected:
        raise DataError(f"{name}: truncated: shape {shape} needs {expected} bytes, found {body}")
    if body > expected:
        raise DataError(f"{name}: {body - expected} unexpected bytes after the data")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file, gzipped or raw (see :func:`parse_idx`)."""
    return parse_idx(_read_maybe_gzip(Path(path)), str(path))


def read_mnist_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an MNIST image file: uint8 ``(N, 28, 28)``."""
    images = read_idx(path)
    _check_images(images, str(path))
    return images


def read_mnist_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an MNIST label file: int64 ``(N,)``, every label in 0-9."""
    labels = read_idx(path)
    return _check_labels(labels, str(path))


def load_mnist(mnist_dir: str | os.PathLike[str], *, verify: bool = True) -> MnistArrays:
    """Read the four MNIST files from ``mnist_dir`` (each ``NAME`` or ``NAME.gz``).

    Args:
        mnist_dir: directory with ``train-images-idx3-ubyte[.gz]`` and the three others.
        verify: check the md5 of each uncompressed file against :data:`MNIST_FILES`.

    Raises:
        DataError: a file is missing, malformed, or not the original MNIST file.
    """
    return load_idx_files(mnist_dir, MNIST_SOURCE, verify=verify, title="MNIST")


def load_idx_files(
    idx_dir: str | os.PathLike[str],
    source: IdxSource,
    *,
    verify: bool = True,
    title: str = "idx",
) -> MnistArrays:
    """Read the four idx files of an MNIST-like dataset (each ``NAME`` or ``NAME.gz``).

    Args:
        idx_dir: directory with ``train-images-idx3-ubyte[.gz]`` and the three others.
        source: which files and checksums (:data:`hnets.data.registry.MNIST_SOURCE`...).
        verify: check the md5 of each uncompressed file against ``source.files``.
        title: how messages call the files (``MNIST``, ``Fashion-MNIST``).

    Raises:
        DataError: a file is missing, malformed, or not the expected file.
    """
    mnist_dir = Path(idx_dir).expanduser()
    if not mnist_dir.is_dir():
        raise DataError(f"{mnist_dir}: {title} directory not found")
    arrays = {}
    for stem, md5 in source.files.items():
        path = _find_idx(mnist_dir, stem)
        data = _read_maybe_gzip(path)
        array = parse_idx(data, str(path))
        if "images" in stem:
            _check_images(array, str(path))
        else:
            array = _check_labels(array, str(path))
        if verify and hashlib.md5(data).hexdigest() != md5:
            raise DataError(
                f"{path}: md5 of the content is not {md5} (not the original {title} file)"
            )
        arrays[stem] = array
    out = MnistArrays(*(arrays[stem] for stem in source.files))
    _check_pairs(out, mnist_dir)
    return out


def find_idx_dir(spec: DatasetSpec, given: str | os.PathLike[str] | None = None) -> Path | None:
    """Where a dataset's idx files are: ``given``, else ``$ENV``, else a system directory.

    Returns ``None`` when none of those holds them (``given`` is returned as it is,
    so that a wrong directory is reported when it is read).
    """
    if spec.source is None:
        return None
    if given:
        return Path(given).expanduser()
    env = os.environ.get(spec.source.env)
    if env:
        return Path(env).expanduser()
    for candidate in spec.source.system_dirs:
        path = Path(candidate)
        if all(_has_idx(path, stem) for stem in spec.source.files):
            return path
    return None


def download_idx(
    spec: DatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    gz_md5: dict[str, str] | None = None,
    progress: bool = True,
) -> Path:
    """Download a dataset's four gzipped idx files into ``<data_dir>/downloads/<name>/``.

    Each file is written atomically and checked against the published gzip md5
    (``gz_md5``, default the registry's); files already there with the right md5 are
    reused. The content md5s are checked again when the files are read.

    Args:
        spec: the dataset (it must name a download location).
        data_dir: where data lives.
        url: base URL instead of the published one (``url + stem + ".gz"``).
        gz_md5: stem -> md5 of the gzip files; ``{}`` skips the gzip check (the
            content is still verified when read).
        progress: progress bars.

    Returns:
        The directory holding the four files.
    """
    source = spec.source
    if source is None or (url is None and source.url is None):
        raise DataError(f"{spec.title}: no published idx files to download")
    base = url if url is not None else source.url
    md5s = source.gz_md5 if gz_md5 is None else gz_md5
    dest = resolve_data_dir(data_dir) / "downloads" / spec.name
    hint = f" Offline? {spec.title}: {source.install_hint}."
    for stem in source.files:
        download(
            f"{base}{stem}.gz",
            dest / f"{stem}.gz",
            md5=md5s.get(stem),
            progress=progress,
            hint=hint,
        )
    return dest


def idx_title(spec: DatasetSpec) -> str:
    return "MNIST" if spec.source is MNIST_SOURCE else spec.title.removeprefix("Rot-")


def _has_idx(directory: Path, stem: str) -> bool:
    return (directory / stem).is_file() or (directory / f"{stem}.gz").is_file()


def _find_idx(mnist_dir: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (mnist_dir / name).is_file():
            return mnist_dir / name
    raise DataError(f"{mnist_dir}: {stem} (or {stem}.gz) not found")


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return _gunzip(data, path) if data[:2] == b"\x1f\x8b" else data


def _gunzip(data: bytes, path: Path) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            out = fh.read(_MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    if len(out) > _MAX_IDX_BYTES:
        raise DataError(f"{path}: expands to more than {_MAX_IDX_BYTES} bytes")
    return out


def _check_images(images: np.ndarray, name: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{name}: expected uint8 images of {IMAGE_SIZE}x{IMAGE_SIZE}, "
            f"got {images.dtype} {images.shape}"
        )


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{name}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    return check_labels(labels, name)


def _check_pairs(mnist: MnistArrays, mnist_dir: Path) -> None:
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]] = (
        ("train", mnist.train_images, mnist.train_labels),
        ("t10k", mnist.test_images, mnist.test_labels),
    )
    for name, images, labels in pairs:
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{mnist_dir}: {name} has {images.shape[0]} images but {labels.shape[0]} labels"
            )
