"""Datasets for hnets: preparation, caching, loading, augmentation and analysis.

Which datasets exist is :mod:`hnets.data.registry`'s: ``rotmnist`` (Rot-MNIST),
``rotfashion`` (Rot-Fashion-MNIST) and ``folder:PATH`` (the user's own images).
Where data lives: ``--data-dir``, else ``$HNETS_DATA``, else ``~/.cache/hnets``
(:func:`resolve_data_dir`). Each prepared variant sits in ``<dataset>-<variant>/``:

* ``rotmnist-original``: the real ``mnist_rotation_new`` (:func:`prepare_download`);
* ``rotmnist-standin``: built offline from the MNIST idx files with the same
  protocol and sizes (:func:`prepare_from_mnist`);
* ``rotmnist-upright``: the stand-in's train/valid digits unrotated, its rotated test
  split;
* ``rotfashion-rotated`` / ``rotfashion-upright``: the same protocol applied to
  Fashion-MNIST (:func:`prepare_from_idx`);
* ``folder-<name>-<key>``: a folder of labelled images (:func:`prepare_folder`).

:func:`data_source` turns a ``--dataset`` name into a :class:`DataSource` that checks,
locates, prepares and loads it. :func:`load_dataset` returns any of them as an
:class:`ImageDataset` of ``(image (C, H, W) float32 in [0, 1], label)`` pairs;
:class:`RotMNIST` is the same for Rot-MNIST; :func:`make_loader` wraps one in a ``DataLoader``;
:func:`random_rotate_batch` / :class:`RandomRotation` augment batches.
"""

from .archive import DEFAULT_MAX_UNPACKED_BYTES, download, safe_extract
from .cache import ALL_SPLITS, SPLITS, SplitArrays, resolve_data_dir, verify_variant
from .dataset import ImageDataset
from .folder import prepare_folder
from .idx import download_idx, load_mnist, parse_idx, read_idx
from .loaders import make_loader
from .locate import ensure_dataset, load_dataset, locate_variant
from .protocol import build_standin, prepare_from_idx, prepare_from_mnist
from .registry import DATASETS, DatasetSpec, dataset_names, get_dataset
from .rotmnist import (
    DEFAULT_MD5,
    DEFAULT_URL,
    RotMNIST,
    parse_amat,
    parse_npz,
    prepare_download,
)
from .sources import DataSource, data_source
from .stats import dataset_stats, format_stats, write_stats_figures
from .transforms import RandomRotation, random_rotate_batch, rotate_images

__all__ = [
    "DataSource",
    "data_source",
    "ALL_SPLITS",
    "DATASETS",
    "DEFAULT_MAX_UNPACKED_BYTES",
    "DEFAULT_MD5",
    "DEFAULT_URL",
    "SPLITS",
    "DatasetSpec",
    "ImageDataset",
    "RandomRotation",
    "RotMNIST",
    "SplitArrays",
    "build_standin",
    "dataset_names",
    "dataset_stats",
    "download",
    "download_idx",
    "ensure_dataset",
    "format_stats",
    "get_dataset",
    "load_dataset",
    "load_mnist",
    "locate_variant",
    "make_loader",
    "parse_amat",
    "parse_idx",
    "parse_npz",
    "prepare_download",
    "prepare_folder",
    "prepare_from_idx",
    "prepare_from_mnist",
    "random_rotate_batch",
    "read_idx",
    "resolve_data_dir",
    "rotate_images",
    "safe_extract",
    "verify_variant",
    "write_stats_figures",
]
