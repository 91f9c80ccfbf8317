"""Rot-MNIST models and the model registry.

Both models take raw images ``(B, 1, 28, 28)`` with values in ``[0, 1]`` and return
logits ``(B, n_classes)``; input scaling lives inside the model. They know nothing
about data loaders or files (see :mod:`hnets.checkpoint` for saving and loading).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .nn import EvalBlur, HBatchNorm, HBlock, HConv2d, HNonLinearity, invariant_readout

__all__ = [
    "HNetMNIST",
    "RegularCNN",
    "build_model",
    "model_names",
    "count_parameters",
    "upgrade_state_dict",
]

# Rot-MNIST pixel standard deviation (over all pixels of the training split). Inputs are
# divided by it but *not* mean-centred: a zero background keeps the square image border
# invisible to the filters, which matters for equivariance at angles other than 90 degrees.
_INPUT_STD = 0.3


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _scaled(width: float, channels: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, round(c * width)) for c in channels)


def _stage_widths(channels: Sequence[int], n: int, model: str) -> tuple[int, ...]:
    """``channels`` as ``n`` positive ints (a list from a checkpoint's JSON is fine)."""
    values = tuple(channels)
    if len(values) != n or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in values
    ):
        raise ValueError(f"{model} channels must be {n} positive integers, got {list(values)}")
    return values


def _block(cin: int, cout: int, *, in_order: int, order: int, batch_norm: bool, pool: int,
           kernel_size: int, n_rings: int | None) -> HBlock:  # fmt: skip
    conv = HConv2d(cin, cout, kernel_size, max_order=order, in_max_order=in_order, n_rings=n_rings)
    bn = HBatchNorm(cout, order) if batch_norm else None
    act = HNonLinearity(cout, order, inplace=True)  # the conv output is ours to overwrite
    return HBlock(conv, act, bn, pool=pool)


#: Positions of the blocks in ``features`` before pooling moved into the blocks (the
#: two ``HAvgPool2d`` stood at 2 and 5): checkpoints written then load through this.
_OLD_FEATURE_INDEX = {"0": "0", "1": "1", "3": "2", "4": "3", "6": "4", "7": "5"}


def _renumber_old_features(state_dict: dict[str, Any], prefix: str = "") -> None:
    """Rename an old checkpoint's ``features.<i>`` keys in place (nothing for new ones)."""
    head = prefix + "features."
    if not any(key.startswith(head + "7.") for key in state_dict):
        return
    moved = {k: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(head)]}
    for key, value in moved.items():  # all popped first: old and new indices overlap
        index, rest = key[len(head) :].split(".", 1)
        state_dict[f"{head}{_OLD_FEATURE_INDEX[index]}.{rest}"] = value


def _renumber_hook(_module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    _renumber_old_features(state_dict, prefix)


def upgrade_state_dict(model: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the keys ``model`` has today, for weights saved by older hnets.

    ``model.load_state_dict`` does this itself; it is here for checks made before loading.
    """
    state = dict(state_dict)
    if isinstance(model, HNetMNIST):
        _renumber_old_features(state)
    return state


class HNetMNIST(nn.Module):
    """The Harmonic Network for Rot-MNIST of Worrall et al. (2017), "DeepMNIST".

    Seven ``k x k`` harmonic convolutions with 8, 8, 16, 16, 32, 32 and ``n_classes``
    channels (``channels`` = the three stages' widths, default ``(8, 16, 32)``, times
    ``width``), rotation orders ``0..max_order``; a magnitude
    nonlinearity after every layer but the last, preceded by magnitude batch norm on
    the even layers (the official code's "batch norm with ReLU"); 2x2 mean pooling
    after blocks one and two. The last layer has rotation order 0 only; the
    read-out sums its magnitudes over orders, averages them over space and adds a
    bias per class. Magnitudes are rotation invariant, so the logits are invariant
    to 90-degree rotations of the input up to float round-off.

    ``features`` is six :class:`~hnets.nn.HBlock` (the second and fourth end with the
    pools), which run their layers fused; ``hnets.nn.unfuse(model)`` runs every layer
    on its own (for hooks on them) with the same values. The forward feeds the scaled
    images straight into the first convolution (what :func:`hnets.lift` would give, at
    half the cost).

    Where the channels go sets the cost more than the parameter count does: the first
    stage runs at 28x28, the second at 14x14 and the third at 7x7, so a channel added
    to the first stage costs about 4x and 16x the arithmetic of one added to the later
    stages, for fewer parameters (``benchmarks/channel_layouts.py`` measures it).

    ``eval_blur`` (pixels, default 0: off) smooths the input by a Gaussian in eval mode
    only (:class:`~hnets.nn.EvalBlur`: training images are resampled, crisp inputs are
    not); the recipe sets 0.5 when it trains with rotation augmentation.

    Shape:
        ``(B, 1, 28, 28)`` in ``[0, 1]`` -> logits ``(B, n_classes)``.
    """

    def __init__(
        self,
        *,
        n_classes: int = 10,
        width: float = 1.0,
        max_order: int = 1,
        kernel_size: int = 5,
        n_rings: int | None = 4,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32),
        eval_blur: float = 0.0,
    ) -> None:
        super().__init__()
        self.eval_blur = EvalBlur(eval_blur)
        c1, c2, c3 = _scaled(width, _stage_widths(channels, 3, "HNetMNIST"))
        spec = [
            (in_channels, c1, False),
            (c1, c1, True),
            (c1, c2, False),
            (c2, c2, True),
            (c2, c3, False),
            (c3, c3, True),
        ]
        blocks = [
            _block(
                cin,
                cout,
                in_order=0 if i == 0 else max_order,
                order=max_order,
                batch_norm=bn,
                pool=2 if i in (1, 3) else 1,
                kernel_size=kernel_size,
                n_rings=n_rings,
            )
            for i, (cin, cout, bn) in enumerate(spec)
        ]
        self.features = nn.Sequential(*blocks)
        self.head = HConv2d(
            c3, n_classes, kernel_size, max_order=0, in_max_order=max_order, n_rings=n_rings
        )
        self.bias = nn.Parameter(torch.zeros(n_classes))
        self.register_buffer("input_scale", torch.tensor(1.0 / _INPUT_STD), persistent=False)
        self.register_load_state_dict_pre_hook(_renumber_hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # real images go straight into the first HConv2d (same as lift(), half the work)
        z = self.head(self.features(self.eval_blur(x) * self.input_scale))
        return invariant_readout(z, self.bias)


class RegularCNN(nn.Module):
    """A plain CNN baseline: six 3x3 conv-BN-ReLU layers, two max-pools, global average pooling.

    Channels ``(12, 12, 24, 24, 30, 30)`` times ``width`` give about the parameter
    count of :class:`HNetMNIST`'s default. Same input convention as the H-Net, and the
    same ``eval_blur``.

    Shape:
        ``(B, 1, 28, 28)`` in ``[0, 1]`` -> logits ``(B, n_classes)``.
    """

    def __init__(
        self,
        *,
        n_classes: int = 10,
        width: float = 1.0,
        in_channels: int = 1,
        channels: tuple[int, ...] = (12, 12, 24, 24, 30, 30),
        eval_blur: float = 0.0,
    ) -> None:
        super().__init__()
        self.eval_blur = EvalBlur(eval_blur)
        chans = _scaled(width, _stage_widths(channels, 6, "RegularCNN"))
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(chans):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            if i in (1, 3):
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, n_classes)
        self.register_buffer("input_scale", torch.tensor(1.0 / _INPUT_STD), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.eval_blur(x) * self.input_scale)
        return self.classifier(h.mean(dim=(-2, -1)))


_REGISTRY: dict[str, Callable[..., nn.Module]] = {"hnet": HNetMNIST, "cnn": RegularCNN}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_REGISTRY)


def build_model(name: str, **options: Any) -> nn.Module:
    """Build a model by name (``"hnet"`` or ``"cnn"``) with options (``width``, ``max_order``, ...).

    The returned module carries ``model.hnets_config = {"name": ..., "options": ...}``,
    everything :func:`hnets.load_model` needs to rebuild it.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    try:
        model = _REGISTRY[name](**options)
    except TypeError as exc:
        raise ValueError(f"bad options for model {name!r}: {exc}") from None
    model.hnets_config = {"name": name, "options": dict(options)}
    return model
