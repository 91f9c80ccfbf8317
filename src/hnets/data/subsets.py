"""Seeded, stratified subsets of a split (for sample-efficiency studies)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError

__all__ = ["stratified_subset"]


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of ``size`` samples whose class shares follow those of ``labels``.

    Each class gets ``floor(size * share)`` samples, and the samples left over go to
    the classes with the largest remainders (ties: lower class index first). Within a
    class the samples are drawn with ``numpy.random.default_rng(seed)``, classes in
    label order. The result is sorted, so the subset keeps the split's order.

    Raises:
        DataError: ``size`` is not in ``1..len(labels)``.
    """
    labels = np.asarray(labels)
    if not 1 <= size <= labels.shape[0]:
        raise DataError(f"a subset of {size} samples from a split of {labels.shape[0]}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / labels.shape[0]
    quota = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(classes.size), -(exact - quota)))
    quota[order[: size - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[:k]
        for c, k in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))
