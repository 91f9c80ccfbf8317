"""The data a saved model takes: its own dataset, or another with the same classes.

:func:`load_checkpoint_data` is how ``hnets test``, ``robustness`` and
``equivariance`` find a checkpoint's test images. The dataset is a
:class:`~hnets.data.sources.DataSource`: a folder is prepared at the image side and
channels the model takes, which finds the copy training prepared (the folder cache
looks up what a request resolved to), so nothing here repeats training's request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..checkpoint import _some, checkpoint_classes, checkpoint_dataset
from ..errors import DataError
from .dataset import ImageDataset
from .sources import data_source

__all__ = ["load_checkpoint_data"]


def load_checkpoint_data(
    config: Mapping[str, Any],
    split: str,
    *,
    dataset: str | None = None,
    variant: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    progress: bool = True,
    recorded_variant: bool = True,
) -> ImageDataset:
    """The split of the data a checkpoint was trained on, or of a compatible ``dataset``.

    By default the dataset (and, for the same dataset with ``recorded_variant``, the
    variant) recorded in the checkpoint. A folder is prepared at the image size and
    channels the model takes (and with the ``skip_bad`` training used): the copy
    training cached is reused, not built again. Another ``dataset`` is accepted only
    when it has the same class names and channels as the checkpoint (Rot-MNIST
    exported to a folder of digit images, say).

    Args:
        config: the checkpoint's ``config.json`` (``model.hnets_checkpoint``).
        split: ``train``, ``valid``, ``test`` or ``train+valid``.
        dataset, variant, data_dir, limit: as for :func:`hnets.data.load_dataset`.
        progress: progress bars while preparing.
        recorded_variant: take the recorded variant when none is given (else the
            dataset's default variant).

    Returns:
        A :class:`hnets.data.ImageDataset`.

    Raises:
        DataError: the data is missing, or its classes or channels are not the model's.
    """
    from .locate import locate_variant

    extra = config.get("extra", {})
    trained_on = checkpoint_dataset(config)
    name = dataset or trained_on
    source = data_source(name)
    classes = checkpoint_classes(config)
    known = source.known_classes(data_dir)  # refused before anything is prepared
    if known is not None:
        _check_classes(classes, known, trained_on, name)
    if recorded_variant and variant is None and name == trained_on:
        variant = source.recorded_variant(extra)
    channels = int(config.get("options", {}).get("in_channels", 1))
    options = source.model_options(extra, channels)
    vdir = locate_variant(data_dir, variant, dataset=name, progress=progress, **options)
    data = ImageDataset(vdir, split, limit=limit)
    _check_classes(classes, data.classes, trained_on, name)
    if data.channels != channels:
        raise DataError(
            f"the model takes {channels}-channel images, {name} has {data.channels} channels"
        )
    return data


def _check_classes(
    model_classes: tuple[str, ...], data_classes: tuple[str, ...], trained_on: str, name: str
) -> None:
    if tuple(data_classes) != tuple(model_classes):
        raise DataError(
            f"the model was trained on {trained_on} ({_some(list(model_classes), 4)}), "
            f"{name} has other classes ({_some(list(data_classes), 4)})"
        )
