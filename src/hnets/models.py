"""Rot-MNIST models and the model registry.

Both models take raw images ``(B, 1, 28, 28)`` with values in ``[0, 1]`` and return
logits ``(B, n_classes)``; input scaling lives inside the model. They know nothing
about data loaders or files (see :mod:`hnets.checkpoint` for saving and loading).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _native
from .nn import HAvgPool2d, HBatchNorm, HConv2d, HNonLinearity

__all__ = ["HNetMNIST", "RegularCNN", "build_model", "model_names", "count_parameters"]

# Rot-MNIST pixel standard deviation (over all pixels of the training split). Inputs are
# divided by it but *not* mean-centred: a zero background keeps the square image border
# invisible to the filters, which matters for equivariance at angles other than 90 degrees.
_INPUT_STD = 0.3


def _hooked(module: nn.Module) -> bool:
    """Whether forward hooks (the module's own or global ones) would see ``module`` run."""
    from torch.nn.modules import module as module_state

    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module_state._global_forward_hooks
        or module_state._global_forward_pre_hooks
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _scaled(width: float, channels: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, round(c * width)) for c in channels)


class _HBlock(nn.Module):
    """``HConv2d`` -> (``HBatchNorm``) -> ``HNonLinearity``."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        in_order: int,
        order: int,
        batch_norm: bool,
        kernel_size: int,
        n_rings: int | None,
    ) -> None:
        super().__init__()
        self.conv = HConv2d(
            cin, cout, kernel_size, max_order=order, in_max_order=in_order, n_rings=n_rings
        )
        self.bn = HBatchNorm(cout, order) if batch_norm else nn.Identity()
        self.act = HNonLinearity(cout, order, inplace=True)  # the conv output is ours
        self.conv.reads_unmerged = True  # see _fused_inference

    def forward(self, z: torch.Tensor, pool: int = 1) -> torch.Tensor:
        """``pool=k``: followed by ``HAvgPool2d(k)``, fused into the nonlinearity."""
        fused = self._fused_inference(z, pool)
        if fused is not None:
            return fused
        z = self.conv(z)
        if isinstance(self.bn, HBatchNorm):
            # act(bn(z)) as one function: the same values, half the saved maps and a
            # backward with two full-size passes instead of about eight
            return self.act(z, bn=self.bn, pool=pool)
        return self.act(z, pool=pool)

    def _fused_inference(self, z: torch.Tensor, pool: int) -> torch.Tensor | None:
        """Inference where the convolution runs Gauss's or Karatsuba's scheme: the
        nonlinearity (batch norm, pooling) reads its unmerged products in one native
        pass, so the convolution's merged output is never stored. ``None`` elsewhere."""
        bn = self.bn if isinstance(self.bn, HBatchNorm) else None
        if self.act.fn is not F.relu or (bn is not None and bn.training):
            return None
        if _hooked(self.conv) or _hooked(self.act):  # hooks see the layers run
            return None
        products = self.conv.unmerged_products(z)
        if products is None:
            return None
        h, w = products[0].shape[-2:]
        tiles = h % pool == 0 and w % pool == 0
        scale = None if bn is None else bn._scale_of(bn.running_power).float()
        pairs = _native.relu_products(
            products,
            (self.act.channels, self.act.max_order + 1),
            scale,
            self.act.bias.float(),
            self.act.eps,
            pool=pool if tiles else 1,
        )
        out = pairs.permute(0, 3, 4, 5, 1, 2)  # harmonic view of the pixel-major maps
        return out if tiles or pool == 1 else HAvgPool2d(pool)(out)


class HNetMNIST(nn.Module):
    """The Harmonic Network for Rot-MNIST of Worrall et al. (2017), "DeepMNIST".

    Seven ``k x k`` harmonic convolutions with 8, 8, 16, 16, 32, 32 and ``n_classes``
    channels (times ``width``), rotation orders ``0..max_order``; a magnitude
    nonlinearity after every layer but the last, preceded by magnitude batch norm on
    the even layers (the official code's "batch norm with ReLU"); 2x2 mean pooling
    after blocks one and two. The last layer has rotation order 0 only; the
    read-out sums its magnitudes over orders, averages them over space and adds a
    bias per class. Magnitudes are rotation invariant, so the logits are invariant
    to 90-degree rotations of the input up to float round-off.

    The forward feeds the scaled images straight into the first convolution (what
    :func:`hnets.lift` would give, at half the cost) and runs each mean pool fused
    into the nonlinearity before it (``act(z, pool=2)``); with forward hooks on those
    layers they run one by one instead, so hooks see every layer's own output.

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
    ) -> None:
        super().__init__()
        c1, c2, c3 = _scaled(width, (8, 16, 32))
        spec = [
            (in_channels, c1, False),
            (c1, c1, True),
            (c1, c2, False),
            (c2, c2, True),
            (c2, c3, False),
            (c3, c3, True),
        ]
        blocks: list[nn.Module] = []
        for i, (cin, cout, bn) in enumerate(spec):
            blocks.append(
                _HBlock(
                    cin,
                    cout,
                    in_order=0 if i == 0 else max_order,
                    order=max_order,
                    batch_norm=bn,
                    kernel_size=kernel_size,
                    n_rings=n_rings,
                )
            )
            if i in (1, 3):
                blocks.append(HAvgPool2d(2))
        self.features = nn.Sequential(*blocks)
        self.head = HConv2d(
            c3, n_classes, kernel_size, max_order=0, in_max_order=max_order, n_rings=n_rings
        )
        self.bias = nn.Parameter(torch.zeros(n_classes))
        self.register_buffer("input_scale", torch.tensor(1.0 / _INPUT_STD), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # real images go straight into the first HConv2d (same as lift(), half the work)
        z = self.head(self._features(x * self.input_scale))
        mag = (z.square().sum(dim=3) + 1e-6).sqrt()  # (B, classes, orders, H, W)
        return mag.sum(dim=2).mean(dim=(-2, -1)) + self.bias

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        """``self.features(z)``, with each block's following mean pool fused into it.

        Not where a forward hook watches the block, its parts or the pool: hooks see
        every layer's own output, as in ``self.features(z)``.
        """
        layers = list(self.features)
        i = 0
        while i < len(layers):
            layer, after = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if (
                isinstance(layer, _HBlock)
                and isinstance(after, HAvgPool2d)
                and after.stride == after.kernel_size
                and not any(_hooked(m) for m in (*layer.modules(), after))
            ):
                z, i = layer(z, pool=after.kernel_size), i + 2
            else:
                z, i = layer(z), i + 1
        return z


class RegularCNN(nn.Module):
    """A plain CNN baseline: six 3x3 conv-BN-ReLU layers, two max-pools, global average pooling.

    Channels ``(12, 12, 24, 24, 30, 30)`` times ``width`` give about the parameter
    count of :class:`HNetMNIST`'s default. Same input convention as the H-Net.

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
    ) -> None:
        super().__init__()
        chans = _scaled(width, tuple(channels))
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
        h = self.features(x * self.input_scale)
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
