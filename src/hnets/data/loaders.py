"""DataLoader construction with reproducible shuffling and device-aware pinning."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["make_loader"]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    seed: int | None = None,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` set up for ``device``.

    Args:
        dataset: e.g. :class:`hnets.data.RotMNIST`; items ``(image, label)``.
        batch_size: samples per batch.
        shuffle: reshuffle every epoch (ignored when ``sampler`` is given: the
            sampler decides the order, e.g. a ``DistributedSampler``).
        device: where the batches will go; memory is pinned for CUDA devices.
        num_workers: loader worker processes (0 loads in the main process);
            workers are kept alive between epochs.
        sampler: an explicit sampler.
        drop_last: drop the last incomplete batch.
        seed: seeds the shuffling generator so that the order is reproducible;
            ``None`` uses torch's global random state.

    Returns:
        The loader; batches are ``(images (B, 1, 28, 28), labels (B,))``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda" and torch.cuda.is_available(),
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
