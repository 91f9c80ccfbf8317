"""Deprecated: the analyses live in :mod:`hnets.analysis` (one module per analysis).

``hnets.studies`` re-exports their public names and warns on import; it will be
removed in a later release.
"""

import warnings

from .analysis import *  # noqa: F403  (the names this alias keeps working)
from .analysis import __all__  # noqa: F401  (so that `from hnets.studies import *` does too)

warnings.warn(
    "hnets.studies is deprecated: import from hnets.analysis",
    DeprecationWarning,
    stacklevel=2,
)
