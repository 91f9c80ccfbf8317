"""Where commands write their results unless told otherwise (``--out``'s defaults).

One table, so that moving a report's folder is a one-line change here.
"""

from __future__ import annotations

__all__ = ["STUDY_OUT", "ROBUSTNESS_OUT", "EQUIVARIANCE_OUT"]

#: ``hnets study``: tables, figures and run records (kept in git).
STUDY_OUT = "docs/results/study"
#: ``hnets robustness``: JSON, CSV and the figure.
ROBUSTNESS_OUT = "robustness"
#: ``hnets equivariance``: the JSON report and the feature-map figure.
EQUIVARIANCE_OUT = "equivariance"
