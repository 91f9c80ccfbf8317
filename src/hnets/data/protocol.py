"""The Rot-MNIST protocol: rotated datasets built from MNIST-like idx files.

It builds the offline Rot-MNIST stand-in from MNIST and Rot-Fashion-MNIST from
Fashion-MNIST: one protocol, two sources (the idx files are read by
:mod:`hnets.data.idx`; which files belong to which dataset is
:mod:`hnets.data.registry`'s).

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

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import DataError
from .cache import (
    SplitArrays,
    is_prepared,
    read_manifest,
    resolve_data_dir,
    staging_dir,
    write_variant,
)
from .idx import MnistArrays, idx_title, load_idx_files
from .registry import DatasetSpec, get_dataset
from .transforms import rotate_images

__all__ = [
    "STANDIN_SIZES",
    "standin_indices",
    "build_standin",
    "prepare_from_idx",
    "prepare_from_mnist",
    "protocol_originals",
    "rotated_variant",
]

#: Split sizes of the stand-in (those of mnist_rotation_new); test takes 40,000
#: training-file digits beyond train and valid, plus the 10,000 t10k digits.
STANDIN_SIZES = {"train": 10_000, "valid": 2_000, "test": 50_000}
_EXTRA_TEST = 40_000
_ROTATE_CHUNK = 4096


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
    title = idx_title(spec)
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
        "see hnets.data.protocol",
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
