"""Rot-MNIST for hnets: preparation, caching, loading, augmentation and analysis.

Where data lives: ``--data-dir``, else ``$HNETS_DATA``, else ``~/.cache/hnets``
(:func:`resolve_data_dir`). Each prepared variant sits in ``rotmnist-<variant>/``:

* ``original``: the real ``mnist_rotation_new`` (:func:`prepare_download`);
* ``standin``: built offline from the MNIST idx files with the same protocol and
  sizes (:func:`prepare_from_mnist`);
* ``upright``: the stand-in's train/valid digits unrotated, its rotated test split.

:class:`RotMNIST` serves ``(image (1, 28, 28) float32 in [0, 1], label)`` pairs of
upright digits; :func:`make_loader` wraps it in a ``DataLoader``;
:func:`random_rotate_batch` / :class:`RandomRotation` augment batches.
"""

from .archive import DEFAULT_MAX_UNPACKED_BYTES, download, safe_extract
from .cache import ALL_SPLITS, SPLITS, VARIANTS, SplitArrays, resolve_data_dir, verify_variant
from .loaders import make_loader
from .mnist import build_standin, load_mnist, parse_idx, prepare_from_mnist, read_idx
from .rotmnist import (
    DEFAULT_MD5,
    DEFAULT_URL,
    RotMNIST,
    ensure_dataset,
    locate_variant,
    parse_amat,
    parse_npz,
    prepare_download,
)
from .stats import dataset_stats, format_stats, write_stats_figures
from .transforms import RandomRotation, random_rotate_batch, rotate_images

__all__ = [
    "ALL_SPLITS",
    "DEFAULT_MAX_UNPACKED_BYTES",
    "DEFAULT_MD5",
    "DEFAULT_URL",
    "SPLITS",
    "VARIANTS",
    "RandomRotation",
    "RotMNIST",
    "SplitArrays",
    "build_standin",
    "dataset_stats",
    "download",
    "ensure_dataset",
    "format_stats",
    "load_mnist",
    "locate_variant",
    "make_loader",
    "parse_amat",
    "parse_idx",
    "parse_npz",
    "prepare_download",
    "prepare_from_mnist",
    "random_rotate_batch",
    "read_idx",
    "resolve_data_dir",
    "rotate_images",
    "safe_extract",
    "verify_variant",
    "write_stats_figures",
]
