r"""The fused H-Net block: :class:`HBlock`, and switching fusion on and off.

A block is ``HConv2d -> [HBatchNorm] -> HNonLinearity -> [k x k mean pool]``, the unit
an H-Net repeats. Its layers stay ordinary submodules (their parameters, buffers and
``print(model)`` are those of the layers), but by default the block runs them fused:

* training: batch norm, magnitude ReLU and pooling are one autograd function
  (:func:`~hnets.nn.functional.batch_norm_magnitude_relu`), which keeps one full-size
  map for the backward instead of three;
* inference where the convolution runs Gauss's or Karatsuba's scheme with the native
  kernels: the nonlinearity reads the convolution's unmerged products in one pass, so
  the convolution's merged output is never stored.

The values are those of the layers run one after the other, up to float round-off.
``block.unfuse()`` (or :func:`unfuse` / :func:`unfused` on a whole model) runs them one
by one, so forward hooks on the layers see each layer's own output; ``block.fuse()``
switches back. Nothing is decided from side signals such as registered hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from . import functional as HF
from .batchnorm import HBatchNorm
from .conv import HConv2d
from .fused_relu import relu_of_products
from .nonlinearity import HNonLinearity
from .pooling import HAvgPool2d

__all__ = ["HBlock", "fuse", "unfuse", "unfused"]


class HBlock(nn.Module):
    """``HConv2d -> [HBatchNorm] -> HNonLinearity -> [HAvgPool2d(pool)]``, run fused.

    Args:
        conv: the convolution.
        act: the nonlinearity (fused when its function is ReLU and the maps are float32
            or float64; any other function runs unfused).
        bn: an optional magnitude batch norm between them.
        pool: ``k > 1`` ends the block with ``k x k`` mean pooling, stride ``k``.
        fused: run the layers as one function (default) or one after the other.

    Shape:
        ``(B, C_in, M_in, 2, H, W)`` -> ``(B, C_out, M_out, 2, H' / pool, W' / pool)``.
    """

    def __init__(
        self,
        conv: HConv2d,
        act: HNonLinearity,
        bn: HBatchNorm | None = None,
        pool: int = 1,
        *,
        fused: bool = True,
    ) -> None:
        super().__init__()
        streams = (conv.out_channels, conv.max_order)
        if (act.channels, act.max_order) != streams or (
            bn is not None and (bn.channels, bn.max_order) != streams
        ):
            raise ValueError(
                f"HBlock: the layers' channels and orders differ: conv {streams}, "
                f"act {(act.channels, act.max_order)}"
                + ("" if bn is None else f", bn {(bn.channels, bn.max_order)}")
            )
        if pool < 1:
            raise ValueError(f"HBlock: pool must be >= 1; got {pool}")
        self.conv = conv
        self.bn = bn
        self.act = act
        self.pool = HAvgPool2d(pool) if pool > 1 else None
        self.fused = fused

    def fuse(self) -> HBlock:
        """Run the layers as one function from now on (the default). Returns ``self``."""
        self.fused = True
        return self

    def unfuse(self) -> HBlock:
        """Run the layers one after the other from now on (hooks see each). Returns ``self``."""
        self.fused = False
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.fused or self.act.fn is not F.relu:
            return self._one_by_one(z)
        bn, act = self.bn, self.act
        k = 1 if self.pool is None else self.pool.kernel_size
        if bn is None or not bn.training:
            products = self.conv.unmerged_products(z)
            if products is not None:
                scale = None if bn is None else bn.scale_of(bn.running_power)
                streams = (act.channels, act.max_order + 1)
                return relu_of_products(products, streams, act.bias, scale=scale, eps=act.eps,
                                        pool=k)  # fmt: skip
        z = self.conv(z)
        if z.dtype not in (torch.float32, torch.float64):
            return self._after_conv(z)
        if bn is None:
            return HF.magnitude_relu(z, act.bias, eps=act.eps, pool=k, inplace=act.inplace)
        out = HF.batch_norm_magnitude_relu(
            z,
            act.bias,
            bn.weight,
            bn.running_power,
            training=bn.training,
            momentum=bn.momentum,
            bn_eps=bn.eps,
            eps=act.eps,
            pool=k,
            inplace=act.inplace,
        )
        if bn.training:
            bn.num_batches_tracked.add_(1)
        return out

    def _one_by_one(self, z: torch.Tensor) -> torch.Tensor:
        return self._after_conv(self.conv(z))

    def _after_conv(self, z: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            z = self.bn(z)
        z = self.act(z)
        return z if self.pool is None else self.pool(z)

    def extra_repr(self) -> str:
        return "fused=True" if self.fused else "fused=False"


def _blocks(model: nn.Module) -> list[HBlock]:
    return [m for m in model.modules() if isinstance(m, HBlock)]


def fuse(model: nn.Module) -> nn.Module:
    """Fuse every :class:`HBlock` in ``model`` (in place); returns ``model``."""
    for block in _blocks(model):
        block.fuse()
    return model


def unfuse(model: nn.Module) -> nn.Module:
    """Unfuse every :class:`HBlock` in ``model`` (in place); returns ``model``."""
    for block in _blocks(model):
        block.unfuse()
    return model


@contextmanager
def unfused(model: nn.Module) -> Iterator[nn.Module]:
    """``with unfused(model): ...`` runs every block layer by layer, then restores each
    block's previous setting (for hooks on the layers, e.g. per-layer studies)."""
    blocks = _blocks(model)
    before = [b.fused for b in blocks]
    for block in blocks:
        block.unfuse()
    try:
        yield model
    finally:
        for block, was in zip(blocks, before, strict=True):
            if was:
                block.fuse()
            else:
                block.unfuse()
