"""hnets: Harmonic Networks (Worrall et al., CVPR 2017) for PyTorch.

Layers (:mod:`hnets.nn`) consume and produce harmonic feature maps shaped
``(batch, channels, orders, 2, height, width)``.
"""

from .checkpoint import load_model, save_model
from .models import HNetMNIST, RegularCNN, build_model, count_parameters, model_names
from .nn import (
    HAvgPool2d,
    HBatchNorm,
    HConv2d,
    HNonLinearity,
    check_harmonic,
    lift,
    magnitude,
    rot90_harmonic,
)

__version__ = "0.1.0"

__all__ = [
    "HConv2d",
    "HNonLinearity",
    "HBatchNorm",
    "HAvgPool2d",
    "lift",
    "magnitude",
    "rot90_harmonic",
    "check_harmonic",
    "HNetMNIST",
    "RegularCNN",
    "build_model",
    "model_names",
    "count_parameters",
    "load_model",
    "save_model",
    "__version__",
]
