"""Robustness curves: accuracy under further rotation, and binned by stored angle."""

import math

import torch

import hnets
from hnets.analysis import accuracy_by_angle, robustness_curve


class _Oriented(torch.nn.Module):
    """Predicts class 1 when the top half is brighter than the bottom half: orientation-bound."""

    def forward(self, x):
        top, bottom = x[..., :14, :].sum((1, 2, 3)), x[..., 14:, :].sum((1, 2, 3))
        return torch.stack([bottom, top], dim=1)


def test_robustness_curve_flat_for_hnet_not_for_orientation_bound_model():
    torch.manual_seed(0)
    images = torch.zeros(20, 1, 28, 28)
    images[:10, :, 2:10, 8:20] = 1.0  # bright top -> class 1
    images[10:, :, 18:26, 8:20] = 1.0  # bright bottom -> class 0
    labels = torch.tensor([1] * 10 + [0] * 10)
    angles = [0, 90, 180, 270]
    oriented = robustness_curve(_Oriented(), images, labels, angles)
    assert oriented[0] == 1.0 and oriented[2] == 0.0
    hnet = hnets.build_model("hnet").eval()
    curve = robustness_curve(hnet, images, labels, angles)
    assert max(curve) - min(curve) == 0.0  # quarter turns: identical predictions


def test_accuracy_by_stored_angle_bins_each_image_by_its_own_rotation():
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 2:10, 8:20] = 1.0  # all bright on top -> predicted class 1
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    angles = torch.tensor([0.1, 0.2, 0.3, 0.4, 3.2, 3.3, 3.4, 3.5])  # radians: two bins
    centres, accs, counts = accuracy_by_angle(_Oriented(), images, labels, angles, 90.0)
    assert centres == [45.0, 135.0, 225.0, 315.0]
    assert counts == [4, 0, 4, 0]
    assert accs[0] == 1.0 and accs[2] == 0.0 and math.isnan(accs[1])


def test_studies_is_a_deprecated_alias_of_analysis():
    import importlib
    import sys

    import pytest

    import hnets.analysis

    sys.modules.pop("hnets.studies", None)
    with pytest.warns(DeprecationWarning, match="hnets.analysis"):
        studies = importlib.import_module("hnets.studies")
    for name in hnets.analysis.__all__:
        assert getattr(studies, name) is getattr(hnets.analysis, name)
