"""MNIST-like idx files, and the rotated datasets built from them by the Rot-MNIST protocol.

The protocol below builds the offline Rot-MNIST stand-in from MNIST and
Rot-Fashion-MNIST from Fashion-MNIST (same file names, sizes and format; which
files and checksums belong to which dataset is :mod:`hnets.data.registry`'s).

The idx format (LeCun et al.): two zero bytes, a type code (``0x08`` unsigned byte,
``0x09`` signed byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E``
float64), the number of dimensions, one big-endian uint32 per dimension, then the
big-endian data. Files may be gzipped; the well-known md5 of each *uncompressed*
file is checked, so a dataset is always built from the same images.

Stand-in protocol (same sizes and split roles as ``mnist_rotation_new``), for a
seed ``s`` and ``rng = numpy.random.default_rng(s)``, in this order:

1. ``perm = rng.permutation(60000)`` over MNIST's training file: train takes the
   digits ``perm[:10000]``, valid ``perm[10000:12000]``, and the test split gets
   the 40,000 further digits ``perm[12000:52000]``;
2. test = all 10,000 digits of the t10k file followed by those 40,000, then
   shuffled by ``rng.permutation(50000)``;
3. angles: ``rng.uniform(0, 2 pi)`` for train (10,000), valid (2,000), test
   (50,000), stored as float32;
4. every image (uint8 / 255) is rotated counter-clockwise by its angle about the
   centre with bilinear interpolation and zero fill
   (:func:`hnets.data.transforms.rotate_images`), then clipped to ``[0, 1]``.

The ``upright`` variant draws exactly the same numbers but leaves the train and
valid digits unrotated (their angles are 0); its test split is identical to the
rotated variant's. Same seed, same bytes.
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
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import DataError
from .archive import download
from .cache import (
    IMAGE_SIZE,
    SplitArrays,
    check_labels,
    is_prepared,
    read_manifest,
    resolve_data_dir,
    staging_dir,
    write_variant,
)
from .registry import FASHION_SOURCE, MNIST_SOURCE, DatasetSpec, IdxSource, get_dataset
from .transforms import rotate_images

__all__ = [
    "MNIST_FILES",
    "STANDIN_SIZES",
    "MnistArrays",
    "parse_idx",
    "read_idx",
    "read_mnist_images",
    "read_mnist_labels",
    "load_mnist",
    "load_idx_files",
    "standin_indices",
    "build_standin",
    "prepare_from_idx",
    "prepare_from_mnist",
    "find_idx_dir",
    "download_idx",
    "protocol_originals",
]

#: The four MNIST files: name -> md5 of the uncompressed file (the well-known values).
MNIST_FILES = MNIST_SOURCE.files
#: The same for Fashion-MNIST.
FASHION_FILES = FASHION_SOURCE.files
#: Split sizes of the stand-in (those of mnist_rotation_new); test takes 40,000
#: training-file digits beyond train and valid, plus the 10,000 t10k digits.
STANDIN_SIZES = {"train": 10_000, "valid": 2_000, "test": 50_000}
_EXTRA_TEST = 40_000
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MAX_IDX_BYTES = 1 << 30  # no MNIST file comes near; caps what a gzip may expand to
_ROTATE_CHUNK = 4096


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


def standin_indices(rng: np.random.Generator, n_train_file: int) -> dict[str, np.ndarray]:
    """Draw which training-file digits go where (step 1 of the protocol).

    Returns:
        ``train`` (10,000), ``valid`` (2,000) and ``extra_test`` (40,000) indices
        into MNIST's training file, pairwise disjoint.
    """
    needed = STANDIN_SIZES["train"] + STANDIN_SIZES["valid"] + _EXTRA_TEST
    if n_train_file < needed:
        raise DataError(
            f"MNIST training file has {n_train_file} digits, the stand-in needs {needed}"
        )
    perm = rng.permutation(n_train_file)
    n_train, n_valid = STANDIN_SIZES["train"], STANDIN_SIZES["valid"]
    return {
        "train": perm[:n_train],
        "valid": perm[n_train : n_train + n_valid],
        "extra_test": perm[n_train + n_valid : needed],
    }


def build_standin(
    mnist: MnistArrays, *, seed: int = 0, upright: bool = False, progress: bool = False
) -> dict[str, SplitArrays]:
    """Build the stand-in's splits in memory, following the module's protocol.

    Args:
        mnist: the MNIST digits (see :func:`load_mnist`).
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same bytes.
        upright: leave train and valid unrotated (variant ``upright``).
        progress: show a progress bar while rotating.

    Returns:
        ``train``, ``valid``, ``test``: float32 images ``(N, 28, 28)`` in ``[0, 1]``,
        int64 labels, float32 angles in ``[0, 2 pi)``.
    """
    raw, angles = _draw(mnist, seed)
    if upright:
        angles["train"][:] = 0.0
        angles["valid"][:] = 0.0
    bar = tqdm(total=sum(STANDIN_SIZES.values()), desc="rotating", unit="img", disable=not progress)
    out = {}
    with bar:
        for split, (images, labels) in raw.items():
            rotate = not (upright and split != "test")
            pixels = _rotate_uint8(images, angles[split], bar) if rotate else _to_float(images, bar)
            out[split] = SplitArrays(pixels, labels.astype(np.int64), angles[split])
    return out


def protocol_originals(
    arrays: MnistArrays, split: str = "test", *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The images of a split *before* the protocol rotated them, in the split's order.

    Sample ``i`` is the unrotated original of sample ``i`` of the variant built with
    ``seed``: crisp, never resampled, as a user's photographed digit or garment is.

    Returns:
        float32 images ``(N, 28, 28)`` in ``[0, 1]`` and int64 labels.
    """
    raw, _ = _draw(arrays, seed)
    images, labels = raw[split]
    return images.astype(np.float32) / np.float32(255.0), labels.astype(np.int64)


def _draw(
    mnist: MnistArrays, seed: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """Steps 1-3 of the protocol: which images go where, in which order, at which angle."""
    if mnist.test_images.shape[0] + _EXTRA_TEST != STANDIN_SIZES["test"]:
        raise DataError(
            f"the stand-in needs exactly 10000 t10k digits, got {len(mnist.test_labels)}"
        )
    rng = np.random.default_rng(seed)
    idx = standin_indices(rng, mnist.train_images.shape[0])
    test_images = np.concatenate([mnist.test_images, mnist.train_images[idx["extra_test"]]])
    test_labels = np.concatenate([mnist.test_labels, mnist.train_labels[idx["extra_test"]]])
    order = rng.permutation(STANDIN_SIZES["test"])
    raw = {
        "train": (mnist.train_images[idx["train"]], mnist.train_labels[idx["train"]]),
        "valid": (mnist.train_images[idx["valid"]], mnist.train_labels[idx["valid"]]),
        "test": (test_images[order], test_labels[order]),
    }
    angles = {split: _draw_angles(rng, STANDIN_SIZES[split]) for split in raw}
    return raw, angles


def prepare_from_mnist(
    mnist_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    upright: bool = False,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build the Rot-MNIST stand-in (or its ``upright`` variant) from MNIST idx files.

    The same as ``prepare_from_idx(mnist_dir, data_dir, dataset="rotmnist", ...)``.

    Returns:
        The variant directory ``<data_dir>/rotmnist-<variant>``.
    """
    return prepare_from_idx(
        mnist_dir,
        data_dir,
        dataset="rotmnist",
        seed=seed,
        upright=upright,
        force=force,
        progress=progress,
    )


def prepare_from_idx(
    idx_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    dataset: str = "rotmnist",
    seed: int = 0,
    upright: bool = False,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build a rotated dataset (or its ``upright`` variant) from its idx files by the protocol.

    An existing build with the same seed is reused; one with another seed needs
    ``force``. The variant is built next to its target and renamed into place, so
    concurrent runs are safe (the loser accepts the winner's identical build).

    Args:
        idx_dir: directory with the four idx files (gzipped or raw).
        data_dir: where data lives (see :func:`hnets.data.resolve_data_dir`).
        dataset: ``rotmnist`` (from MNIST: the stand-in) or ``rotfashion`` (from
            Fashion-MNIST).
        seed: the protocol's seed.
        upright: build the ``upright`` variant.
        force: rebuild even if the variant exists.
        progress: show progress bars.

    Returns:
        The variant directory ``<data_dir>/<dataset>-<variant>``.
    """
    spec = get_dataset(dataset)
    if spec.source is None:
        raise DataError(f"{spec.title} is not built from idx files")
    root = resolve_data_dir(data_dir)
    variant = "upright" if upright else rotated_variant(spec)
    target = root / spec.dir_name(variant)
    seed = int(seed)

    def same_build(manifest: dict[str, Any]) -> bool:
        source = manifest.get("source")
        kind = source.get("kind") if isinstance(source, dict) else None
        return kind in ("mnist", "idx") and manifest.get("seed") == seed

    if not force and is_prepared(target):
        manifest = read_manifest(target)
        if same_build(manifest):
            return target
        raise DataError(
            f"{target} was built with seed {manifest.get('seed')}; "
            f"use --force to rebuild it with seed {seed}"
        )
    title = _idx_title(spec)
    arrays = load_idx_files(idx_dir, spec.source, title=title)
    splits = build_standin(arrays, seed=seed, upright=upright, progress=progress)
    kind = "mnist" if spec.name == "rotmnist" else "idx"  # "mnist": as Rot-MNIST builds always said
    info = {
        "source": {
            "kind": kind,
            "idx_dir": str(Path(idx_dir).resolve()),
            **({"mnist_dir": str(Path(idx_dir).resolve())} if kind == "mnist" else {}),
            "md5": dict(spec.source.files),
        },
        "seed": seed,
        "protocol": f"hnets {spec.title} by the Rot-MNIST protocol v1 ({variant}); "
        "see hnets.data.mnist",
    }
    with staging_dir(root, spec.dir_name(variant)) as staging:
        return write_variant(
            root,
            variant,
            splits,
            info,
            staging=staging,
            force=force,
            accept=same_build,
            dataset=spec.name,
        )


def rotated_variant(spec: DatasetSpec) -> str:
    """The variant the protocol builds with every split rotated (``standin``, ``rotated``)."""
    return next(v for v in spec.variants if v not in ("original", spec.upright_variant))


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


def _idx_title(spec: DatasetSpec) -> str:
    return "MNIST" if spec.source is MNIST_SOURCE else spec.title.removeprefix("Rot-")


def _has_idx(directory: Path, stem: str) -> bool:
    return (directory / stem).is_file() or (directory / f"{stem}.gz").is_file()


def _draw_angles(rng: np.random.Generator, n: int) -> np.ndarray:
    angles = rng.uniform(0.0, 2.0 * math.pi, size=n).astype(np.float32)
    angles[angles >= 2.0 * math.pi] = 0.0  # float32 rounding may reach 2 pi itself
    return angles


def _rotate_uint8(images: np.ndarray, angles: np.ndarray, bar: tqdm) -> np.ndarray:
    out = np.empty(images.shape, dtype=np.float32)
    for start in range(0, images.shape[0], _ROTATE_CHUNK):
        stop = start + _ROTATE_CHUNK
        chunk = torch.from_numpy(images[start:stop].astype(np.float32) / np.float32(255.0))
        turned = rotate_images(chunk, torch.from_numpy(angles[start:stop]))
        out[start:stop] = turned.clamp_(0.0, 1.0).numpy()
        bar.update(chunk.shape[0])
    return out


def _to_float(images: np.ndarray, bar: tqdm) -> np.ndarray:
    bar.update(images.shape[0])
    return images.astype(np.float32) / np.float32(255.0)


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
