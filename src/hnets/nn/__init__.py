"""Harmonic Network layers, one family per module.

All layers consume and produce harmonic feature maps shaped
``(batch, channels, orders, 2, height, width)`` (see :mod:`hnets.nn.functional`).
"""

from .batchnorm import HBatchNorm
from .conv import HConv2d
from .functional import check_harmonic, lift, magnitude, rot90_harmonic
from .nonlinearity import HNonLinearity
from .pooling import HAvgPool2d

__all__ = [
    "HConv2d",
    "HNonLinearity",
    "HBatchNorm",
    "HAvgPool2d",
    "lift",
    "magnitude",
    "rot90_harmonic",
    "check_harmonic",
]
