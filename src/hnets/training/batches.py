"""The data of a run, in memory: its splits, and the batches of an epoch.

The training images are indexed directly as tensors, a whole batch at a time (no
per-sample ``__getitem__``); a ``DataLoader`` runs only with ``num_workers > 0``, and
then its items are whole batches too, so both paths see the same data stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import ImageDataset, ensure_dataset
from ..data.subsets import stratified_subset
from .config import TrainConfig

__all__ = ["RunData", "batches"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass
class RunData:
    """The prepared variant and the in-memory training and validation splits."""

    vdir: Path
    variant: str
    train: ImageDataset
    valid: ImageDataset | None

    @classmethod
    def load(cls, config: TrainConfig, *, progress: bool) -> RunData:
        """Prepare the dataset if needed; read the training split (and ``valid`` for ``train``)."""
        vdir = ensure_dataset(  # the folder options are unset (checked) for other datasets
            config.data_dir,
            config.data_variant,
            dataset=config.dataset,
            progress=progress,
            image_size=config.image_size,
            channels=config.channels,
            skip_bad=config.skip_bad,
        )
        train = ImageDataset(vdir, config.train_split, limit=config.limit_train)
        if config.train_size is not None:
            chosen = stratified_subset(train.labels.numpy(), config.train_size, config.seed)
            train = train.subset(chosen)
        valid = (
            ImageDataset(vdir, "valid", limit=config.limit_eval)
            if config.train_split == "train"
            else None
        )
        return cls(vdir, train.variant, train, valid)

    def test_split(self, limit: int | None) -> ImageDataset:
        """The test split, read only now: a run chosen on validation never opens it."""
        return ImageDataset(self.vdir, "test", limit=limit)

    def description(self) -> dict[str, Any]:
        """What a checkpoint and a summary record of the data."""
        return {
            "dataset": self.train.name,
            "title": self.train.title,
            "classes": list(self.train.classes),
            "image_shape": list(self.train.images.shape[1:]),
            "variant": self.variant,
            "standin": self.train.standin,
        }

    def train_tensors(self, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images and labels, moved to ``device`` once (``None``: kept on the CPU)."""
        if device is None:
            return self.train.images, self.train.labels
        return self.train.images.to(device), self.train.labels.to(device)


def batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    angles: torch.Tensor | None,
    positions: torch.Tensor,
    batch_size: int,
    *,
    skip: int,
    num_workers: int,
    device: torch.device,
) -> Iterator[Batch]:
    """``(images, labels, angles)`` batches of the given positions, after ``skip`` batches.

    ``positions`` index the epoch's ``order`` (this process's share, see
    :func:`~hnets.training.shard_positions`); ``angles`` are per position.
    """
    chunks = list(positions.split(batch_size))[skip:]
    if num_workers == 0:
        index_device = images.device
        for pos in chunks:
            index = order[pos].to(index_device)
            yield images[index], labels[index], None if angles is None else angles[pos]
        return
    loader = torch.utils.data.DataLoader(
        _BatchList(images, labels, order, angles, chunks),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    yield from loader


class _BatchList(torch.utils.data.Dataset):
    """Whole batches as items, for ``DataLoader`` workers (``num_workers > 0``)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        order: torch.Tensor,
        angles: torch.Tensor | None,
        chunks: list[torch.Tensor],
    ) -> None:
        self.images, self.labels, self.order = images, labels, order
        self.angles, self.chunks = angles, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Batch:
        pos = self.chunks[i]
        index = self.order[pos]
        return (
            self.images[index],
            self.labels[index],
            None if self.angles is None else self.angles[pos],
        )
