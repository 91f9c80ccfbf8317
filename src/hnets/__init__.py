"""hnets: Harmonic Networks (Worrall et al., CVPR 2017) for PyTorch.

Layers (:mod:`hnets.nn`) consume and produce harmonic feature maps shaped
``(batch, channels, orders, 2, height, width)``. The other public subpackages
(:data:`SUBMODULES`: ``hnets.data``, ``hnets.export``, ``hnets.equivariance``...)
are attributes of ``hnets`` too, imported on first use (as torch does), so
``import hnets`` stays fast: it costs torch, numpy and safetensors, never the
plotting, image or command-line libraries.

Pretrained models ship inside the package: :func:`list_models` names them and
:func:`get_model` builds one, ``get_model("hnet-rotmnist", pretrained=True)``
(:mod:`hnets.hub`).
"""

import importlib
from typing import Any

from ._version import __version__
from .checkpoint import load_model, save_model
from .equivariance import check_equivariance
from .hub import get_model, get_weights, list_models
from .models import HNet, HNetMNIST, RegularCNN, build_model, count_parameters, model_names
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

#: Public subpackages reachable as ``hnets.<name>`` without importing them first.
SUBMODULES = (
    "basis",
    "bench",
    "checkpoint",
    "cli",
    "data",
    "equivariance",
    "errors",
    "evaluation",
    "export",
    "hub",
    "images",
    "models",
    "nn",
    "analysis",
    "studies",
    "study",
    "training",
)


def __getattr__(name: str) -> Any:
    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *SUBMODULES})


__all__ = [
    "HConv2d",
    "HNonLinearity",
    "HBatchNorm",
    "HAvgPool2d",
    "lift",
    "magnitude",
    "rot90_harmonic",
    "check_harmonic",
    "HNet",
    "HNetMNIST",
    "RegularCNN",
    "check_equivariance",
    "build_model",
    "model_names",
    "count_parameters",
    "load_model",
    "save_model",
    "list_models",
    "get_model",
    "get_weights",
    "__version__",
]
