"""Harmonic Network layers, one family per module.

All layers consume and produce harmonic feature maps shaped
``(batch, channels, orders, 2, height, width)`` (see :mod:`hnets.nn.layout`); the
operations they run are defined once, as functions, in :mod:`hnets.nn.functional`.

* :mod:`~hnets.nn.conv`: :class:`HConv2d` (parameters, basis, forward); which of its
  schemes ``impl="auto"`` runs: :mod:`~hnets.nn.dispatch` (a fixed table, or what
  ``hnets tune`` stored);
* :mod:`~hnets.nn.nonlinearity`, :mod:`~hnets.nn.batchnorm`, :mod:`~hnets.nn.pooling`:
  the pointwise layers;
* :mod:`~hnets.nn.block`: :class:`HBlock`, the three run fused, with ``fuse()``/``unfuse()``;
* :mod:`~hnets.nn.upsample`, :mod:`~hnets.nn.skip`: :class:`HUpsample` and :class:`HSkip`,
  for per-pixel (dense) outputs;
* :mod:`~hnets.nn.readout`: module forms of :func:`lift`, :func:`magnitude` and the
  read-outs (:class:`Lift`, :class:`Magnitude`, :class:`InvariantReadout`,
  :class:`PixelReadout`), which export as they are;
* :mod:`~hnets.nn.blur`: :class:`EvalBlur`, the models' input low-pass at inference;
* :mod:`~hnets.nn.fused_relu`: the magnitude ReLU's definition and accelerated forms.
"""

from .batchnorm import HBatchNorm
from .block import HBlock, fuse, unfuse, unfused
from .blur import EvalBlur, gaussian_blur, gaussian_kernel
from .conv import HConv2d
from .functional import (
    batch_norm_magnitude_relu,
    check_harmonic,
    invariant_readout,
    lift,
    magnitude,
    magnitude_relu,
    mean_pool,
    rot90_harmonic,
)
from .nonlinearity import HNonLinearity
from .pooling import HAvgPool2d
from .readout import InvariantReadout, Lift, Magnitude, PixelReadout, pixel_readout
from .skip import HSkip, harmonic_cat
from .upsample import HUpsample, upsample

__all__ = [
    "HConv2d",
    "HNonLinearity",
    "HBatchNorm",
    "HAvgPool2d",
    "HBlock",
    "HUpsample",
    "HSkip",
    "Lift",
    "Magnitude",
    "InvariantReadout",
    "PixelReadout",
    "pixel_readout",
    "harmonic_cat",
    "upsample",
    "EvalBlur",
    "gaussian_blur",
    "gaussian_kernel",
    "fuse",
    "unfuse",
    "unfused",
    "lift",
    "magnitude",
    "magnitude_relu",
    "batch_norm_magnitude_relu",
    "mean_pool",
    "invariant_readout",
    "rot90_harmonic",
    "check_harmonic",
]
