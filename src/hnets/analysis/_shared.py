"""What the analyses share: a checkpoint's model and test images, and plain accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DataError
from ..evaluation import batched_logits


def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> float:
    """The share of ``images`` ``(N, C, H, W)`` whose predicted class is ``labels`` ``(N,)``."""
    hits = correct_mask(model, images, labels, batch_size)
    return int(hits.sum()) / len(hits)


def correct_mask(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``(N,)`` booleans on the CPU: whether each image's predicted class is its label."""
    hits = [
        (logits.argmax(1) == y).cpu()
        for logits, y in batched_logits(model, images, labels, batch_size=batch_size)
    ]
    return torch.cat(hits)


def load(checkpoint: str | Path) -> tuple[nn.Module, str]:
    """The model a checkpoint holds, and its model name."""
    from ..checkpoint import load_model

    model = load_model(checkpoint)
    return model, model.hnets_config["name"]


def load_test_split(
    model: nn.Module,
    dataset: str | None,
    variant: str | None,
    data_dir: str | Path | None,
    limit: int | None,
) -> Any:
    """The test split of the model's dataset (or of ``dataset``, which must have its classes)."""
    from ..data.model_data import load_checkpoint_data

    return load_checkpoint_data(
        model.hnets_checkpoint,
        "test",
        dataset=dataset,
        variant=variant,
        data_dir=data_dir,
        limit=limit,
        recorded_variant=False,
    )


def check_classes(model: nn.Module, test: Any, checkpoint: str | Path) -> None:
    """Refuse a model that predicts other classes than ``test`` has."""
    from ..checkpoint import checkpoint_classes

    if checkpoint_classes(model.hnets_checkpoint) != tuple(test.classes):
        raise DataError(f"{checkpoint}: the model predicts other classes than {test.name} has")
