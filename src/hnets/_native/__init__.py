"""Native CPU kernels for hnets' hot paths, in C, compiled on first use.

``kernels.c`` holds the operations that, as PyTorch ops, take many passes over memory
(several on stride-2 views that do not vectorise) for a handful of flops per complex
pair; each is one pass here (two for the batch-norm backward), with OpenMP over
positions:

* the magnitude nonlinearity of :class:`~hnets.nn.HNonLinearity`, alone or fused with
  the training-mode :class:`~hnets.nn.HBatchNorm` before it (:func:`relu_forward`,
  :func:`relu_backward`, :func:`power_sum`), and with the 2x2 mean pool after it
  (``pool=2``; :func:`tile_spread` is the pool's own backward);
* the (de)interleaving around the convolution schemes of :mod:`hnets.nn.schemes`:
  Gauss's three real products (:func:`split3`, :func:`merge3`) and Karatsuba's nine
  (:func:`split9`, :func:`merge9` and their backwards), and the nonlinearity read
  straight from those unmerged products in inference (:func:`relu_products`);
* the filter synthesis of :class:`~hnets.nn.HConv2d` (:func:`synthesise`,
  :func:`synthesise_backward`), written in the layout the convolution reads.

Two modules: :mod:`hnets._native.build` finds a compiler, builds (OpenMP, else a serial
build, else hnets' PyTorch implementation, with one warning), caches and loads the
library and checks that it was built from this source (a hash of ``kernels.c``, no hand-
kept version); :mod:`hnets._native.kernels` wraps each C function, checking every
tensor at the ctypes boundary (float32, CPU, shape, dense layout: a :class:`ValueError`
otherwise). Callers ask :func:`usable` first. ``HNETS_NATIVE=0`` turns the kernels off.
"""

from __future__ import annotations

from .build import available, disabled, variant
from .kernels import (
    merge3,
    merge9,
    merge9_grad,
    power_sum,
    relu_backward,
    relu_forward,
    relu_products,
    split3,
    split9,
    split9_grad,
    synthesise,
    synthesise_backward,
    tile_spread,
    usable,
)

__all__ = [
    "available",
    "disabled",
    "relu_forward",
    "relu_backward",
    "power_sum",
    "split3",
    "merge3",
    "synthesise",
    "synthesise_backward",
    "split9",
    "merge9",
    "split9_grad",
    "merge9_grad",
    "relu_products",
    "tile_spread",
    "usable",
    "variant",
]
