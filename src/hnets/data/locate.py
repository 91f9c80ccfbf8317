"""Finding a prepared dataset by name, building it where that needs no network.

:func:`ensure_dataset` is what training and evaluation call: it returns the
directory of a prepared variant and builds the idx-based datasets from local files
(``$HNETS_MNIST_DIR``, ``$HNETS_FASHION_DIR``, a system package's directory) and a
folder of the user's images when they are not prepared yet. Downloads happen only
in ``hnets data prepare``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import DataError
from .cache import MANIFEST_NAME, read_manifest
from .dataset import ImageDataset
from .sources import data_source, missing_data_message

__all__ = ["ensure_dataset", "locate_variant", "load_dataset", "missing_data_message"]


def ensure_dataset(
    data_dir: str | os.PathLike[str] | None = None,
    variant: str | None = None,
    *,
    dataset: str = "rotmnist",
    progress: bool = True,
    **folder_options: Any,
) -> Path:
    """The directory of a prepared variant, building it if that is possible offline.

    With ``variant=None`` the dataset's default variants are tried in order
    (Rot-MNIST: ``original``, then ``standin``). When the data is missing and the
    dataset's idx files are found locally (``$HNETS_MNIST_DIR`` for Rot-MNIST;
    ``$HNETS_FASHION_DIR`` or ``/usr/share/datasets/fashion-mnist`` for
    Rot-Fashion-MNIST) it is built from there with seed 0. ``folder:PATH`` is
    prepared (or found in the cache, keyed by the folder's content) with
    ``folder_options`` (``image_size``, ``channels``, ``skip_bad``). The network is
    never used. This is :meth:`hnets.data.sources.DataSource.locate`.

    Raises:
        DataError: no data, with a message saying how to get it.
    """
    return data_source(dataset).locate(data_dir, variant, progress=progress, **folder_options)


def locate_variant(
    root: str | os.PathLike[str] | None,
    variant: str | None = None,
    *,
    dataset: str | None = None,
    progress: bool = True,
    **folder_options: Any,
) -> Path:
    """The variant directory named by ``root`` (a data or variant directory) and ``variant``.

    A ``root`` holding ``manifest.json`` is a variant directory itself (checked to
    hold ``dataset`` and ``variant`` when they are given); anything else is a data
    directory handed to :func:`ensure_dataset` with ``dataset`` (default
    ``rotmnist``).
    """
    if root is not None and (Path(root) / MANIFEST_NAME).is_file():
        vdir = Path(root)
        manifest = read_manifest(vdir)
        found = manifest["variant"]
        if variant is not None and found != variant:
            raise DataError(f"{vdir} holds variant {found!r}, not {variant!r}")
        kind = manifest.get("dataset", "rotmnist")
        wanted = None if dataset is None else data_source(dataset).manifest_dataset
        if wanted is not None and kind != wanted:
            raise DataError(f"{vdir} holds dataset {kind!r}, not {dataset!r}")
        return vdir
    return ensure_dataset(
        root, variant, dataset=dataset or "rotmnist", progress=progress, **folder_options
    )


def load_dataset(
    name: str = "rotmnist",
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    variant: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    **folder_options: Any,
) -> ImageDataset:
    """One split of a dataset by name, prepared if that is possible offline.

    Args:
        name: ``rotmnist``, ``rotfashion`` or ``folder:PATH`` (see
            :mod:`hnets.data.registry`).
        split: ``train``, ``valid``, ``test`` or ``train+valid``.
        root: the data directory (``None``: :func:`hnets.data.resolve_data_dir`), or
            a prepared variant directory itself.
        variant: which variant (``None``: the dataset's default).
        limit: keep only the first ``limit`` samples.
        progress: progress bars while building.
        folder_options: ``image_size``, ``channels``, ``skip_bad`` for folders.

    Example:
        >>> test = load_dataset("rotfashion", "test")          # doctest: +SKIP
        >>> test.images.shape, test.classes[5]                 # doctest: +SKIP
        (torch.Size([50000, 1, 28, 28]), 'Sandal')
    """
    data_source(name)  # an unknown name: the one-line error listing the known ones
    vdir = locate_variant(root, variant, dataset=name, progress=progress, **folder_options)
    return ImageDataset(vdir, split, limit=limit)
