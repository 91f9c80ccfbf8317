"""Accuracy on crisp inputs: the test images' unrotated originals and their exact quarter turns.

The rotated test sets are made by resampling (bilinear) upright images; the
originals and their ``torch.rot90`` turns are never resampled, as a photographed
digit or garment would not be.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import HNetsError
from ._shared import accuracy

__all__ = ["crisp_accuracy", "protocol_originals_of"]


def protocol_originals_of(data: Any) -> torch.Tensor:
    """The unrotated originals ``(N, 1, H, W)`` of a split built by the rotation protocol.

    ``data`` is a loaded split (:func:`hnets.data.load_dataset`, or what
    :func:`hnets.data.model_data.load_checkpoint_data` returns) of Rot-MNIST's stand-in or
    Rot-Fashion-MNIST; sample ``i`` of the result is sample ``i`` of ``data`` before the
    protocol rotated it (crisp, never resampled). Needs the dataset's idx files.

    Raises:
        HNetsError: a dataset not built by the protocol here (the real Rot-MNIST, a
            folder), idx files not found, or originals that do not match ``data``.
    """
    from ..data.idx import find_idx_dir, load_idx_files
    from ..data.protocol import protocol_originals
    from ..data.registry import DATASETS

    spec = DATASETS.get(getattr(data, "name", ""))
    if spec is None or spec.source is None or data.variant == "original":
        raise HNetsError(
            f"crisp originals exist only for datasets built here by the rotation protocol "
            f"(the Rot-MNIST stand-in, Rot-Fashion-MNIST); not for {data.name} {data.variant}"
        )
    idx_dir = find_idx_dir(spec)
    if idx_dir is None:
        raise HNetsError(f"crisp originals need the {spec.title} idx files: "
                         f"{spec.source.install_hint}")  # fmt: skip
    seed = int(data.manifest.get("seed") or 0)
    images, labels = protocol_originals(load_idx_files(idx_dir, spec.source), data.split,
                                        seed=seed)  # fmt: skip
    n = len(data)
    if not np.array_equal(labels[:n], data.labels.numpy()):
        raise HNetsError(f"{idx_dir}: the originals do not match {data.root} (another seed?)")
    return torch.from_numpy(images[:n]).unsqueeze(1)


def crisp_accuracy(
    model: nn.Module,
    originals: torch.Tensor,
    rotated: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 500,
) -> dict[str, float]:
    """Accuracy on crisp inputs next to the resampled ones they were made from.

    Args:
        originals: the unrotated test images ``(N, C, H, W)``
            (:func:`hnets.data.protocol.protocol_originals`).
        rotated: the same images as the test split stores them (rotated, bilinear).
        labels: ``(N,)``.

    Returns:
        ``{"rotated", "crisp_0", "crisp_90", "crisp_180", "crisp_270"}``: accuracy on
        the rotated test images, and on the originals turned by exact quarter turns
        (``torch.rot90``: no interpolation).
    """
    model.eval()
    out = {"rotated": accuracy(model, rotated, labels, batch_size)}
    for k in range(4):
        turned = torch.rot90(originals, k, dims=(-2, -1)) if k else originals
        out[f"crisp_{90 * k}"] = accuracy(model, turned, labels, batch_size)
    return out
