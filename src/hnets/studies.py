"""Deprecated: the analyses live in :mod:`hnets.analysis` (one module per analysis).

``hnets.studies`` re-exports their public names and warns on import; it will be
removed in a later release.
"""

import warnings

from .analysis import (
    accuracy_by_angle,
    crisp_accuracy,
    equivariance_study,
    feature_equivariance,
    protocol_originals_of,
    robustness_curve,
    robustness_files,
    robustness_study,
)

warnings.warn(
    "hnets.studies is deprecated: import from hnets.analysis",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "crisp_accuracy",
    "protocol_originals_of",
    "robustness_curve",
    "accuracy_by_angle",
    "robustness_study",
    "robustness_files",
    "feature_equivariance",
    "equivariance_study",
]
