"""Analyses of trained models under rotation, one module each.

* :mod:`hnets.analysis.robustness`: test accuracy when every image is rotated
  further (:func:`robustness_curve`), or binned by each image's stored angle
  (:func:`accuracy_by_angle`); :func:`robustness_study` writes JSON, CSV and a figure.
* :mod:`hnets.analysis.feature_maps`: how far the logits and each layer's feature
  maps are from following a rotation of the input (:func:`feature_equivariance`,
  :func:`equivariance_study`). The measures themselves are :mod:`hnets.equivariance`'s.
* :mod:`hnets.analysis.crisp`: accuracy on the test images' unrotated originals and
  their exact quarter turns (:func:`crisp_accuracy`, :func:`protocol_originals_of`).
* :mod:`hnets.analysis.scores`: a saved model scored on a split, what ``hnets test``
  runs and prints (:func:`evaluate_checkpoint`, :func:`format_evaluation`).
"""

from .crisp import crisp_accuracy, protocol_originals_of
from .feature_maps import equivariance_study, feature_equivariance
from .robustness import accuracy_by_angle, robustness_curve, robustness_files, robustness_study
from .scores import evaluate_checkpoint, format_evaluation

__all__ = [
    "crisp_accuracy",
    "protocol_originals_of",
    "robustness_curve",
    "accuracy_by_angle",
    "robustness_study",
    "robustness_files",
    "feature_equivariance",
    "equivariance_study",
    "evaluate_checkpoint",
    "format_evaluation",
]
