"""A prepared split of any dataset, held in memory as tensors."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import check_split, load_split, manifest_classes, manifest_title, read_manifest
from .registry import DATASETS

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """One split of a prepared dataset directory, as a map-style dataset.

    Items are ``(image, label)``: ``image`` a float32 tensor ``(C, H, W)`` in
    ``[0, 1]``, ``label`` an ``int`` class index into :attr:`classes`. The whole
    split is held in memory (Rot-MNIST's 50,000-image test split is 157 MB).

    Args:
        vdir: a prepared variant directory (one holding ``manifest.json``); see
            :func:`hnets.data.load_dataset` to name a dataset instead.
        split: ``train``, ``valid``, ``test`` or ``train+valid``.
        limit: keep only the first ``limit`` samples.

    Attributes:
        images: float32 ``(N, C, H, W)``.
        labels: int64 ``(N,)``.
        angles: float32 ``(N,)`` radians, or ``None`` where the angles are unknown.
        dataset: ``rotmnist``, ``rotfashion`` or ``folder``; ``variant``, ``split``:
            what was loaded; ``classes``: class names in label order; ``root``: the
            variant directory; ``manifest``: its manifest.
    """

    def __init__(self, vdir: str | os.PathLike[str], split: str, limit: int | None = None) -> None:
        check_split(split)
        vdir = Path(vdir)
        manifest = read_manifest(vdir)
        arrays = load_split(vdir, split, limit=limit, manifest=manifest)
        self.root = vdir
        self.manifest = manifest
        self.dataset: str = manifest.get("dataset", "rotmnist")
        self.variant: str = manifest["variant"]
        self.split = split
        self.classes: tuple[str, ...] = manifest_classes(manifest)
        self.images = torch.from_numpy(arrays.chw)
        self.labels = torch.from_numpy(arrays.labels)
        self.angles = torch.from_numpy(arrays.angles) if arrays.angles is not None else None

    def subset(self, indices: np.ndarray | torch.Tensor) -> ImageDataset:
        """The same split restricted to ``indices`` (a shallow copy; tensors are indexed)."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        out = copy.copy(self)
        out.images, out.labels = self.images[index], self.labels[index]
        out.angles = self.angles[index] if self.angles is not None else None
        return out

    @property
    def title(self) -> str:
        """How messages call the dataset (``Rot-MNIST``, or the folder's name)."""
        return manifest_title(self.manifest)

    @property
    def standin(self) -> bool:
        """Whether this variant stands in for a published dataset (Rot-MNIST built offline)."""
        spec = DATASETS.get(self.dataset)
        return spec is not None and spec.is_standin(self.variant)

    @property
    def name(self) -> str:
        """The ``--dataset`` name: ``rotmnist``, ``rotfashion`` or ``folder:PATH``."""
        if self.dataset in DATASETS:
            return self.dataset
        return f"folder:{self.manifest.get('source', {}).get('path', self.root)}"

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dataset={self.dataset!r}, variant={self.variant!r}, "
            f"split={self.split!r}, n={len(self)}, root={str(self.root)!r})"
        )
