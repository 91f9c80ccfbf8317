"""The model a run trains and what trains it: seeding, the model built for the data,
the optimizer and the precision."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from ..models import build_model, default_hnet_options
from ..nn import HConv2d
from .batches import RunData
from .config import TrainConfig

__all__ = ["seed_everything", "build_for", "make_optimizer", "amp_dtype"]

_SGD_MOMENTUM = 0.9


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the model's initialisation)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_for(config: TrainConfig, data: RunData) -> nn.Module:
    """The model of ``config`` for ``data``'s input channels and number of classes.

    The two enter the model's options only where they differ from the defaults
    (one channel, ten classes), so Rot-MNIST checkpoints read as they always did. An
    H-Net for images larger than 32 pixels a side gets the stages of
    :func:`hnets.models.default_hnet_options` (recorded in its options) unless
    ``model_options`` set its stages themselves.
    """
    shape = {"in_channels": data.train.channels, "n_classes": len(data.train.classes)}
    options = {k: v for k, v in shape.items() if v != {"in_channels": 1, "n_classes": 10}[k]}
    if config.model == "hnet" and not {"channels", "depth", "pool"} & set(config.model_options):
        options |= default_hnet_options(*data.train.images.shape[-2:])
    options |= config.model_options
    try:
        return build_model(config.model, **options)
    except ValueError as exc:
        raise ValueError(f"model {config.model!r} with {options}: {exc}") from None


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``config.optimizer`` with weight decay on convolution and linear weights only."""
    decay = [m.weight for m in model.modules() if isinstance(m, (HConv2d, nn.Conv2d, nn.Linear))]
    decay_ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in decay_ids]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=_SGD_MOMENTUM, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast type of ``config.amp`` on ``device``; ``None``: full precision."""
    if not config.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
