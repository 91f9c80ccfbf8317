"""Feature-map equivariance reports of trained-model layers."""

import math

import torch

import hnets
from hnets.analysis import feature_equivariance


def test_feature_equivariance_report_quarter_turns_exact_other_angles_small():
    torch.manual_seed(0)
    model = hnets.build_model("hnet").eval()
    images = torch.rand(3, 1, 28, 28)
    report = feature_equivariance(model, images, [90, 180, 45])
    assert report["logits"][0] < 1e-5 and report["logits"][1] < 1e-5
    assert max(report["layers"][0]) < 1e-5
    assert 1e-4 < report["logits"][2] < 0.2
    n_layers = len(report["layers"][0])
    assert n_layers == len(list(model.features.children()))
    cnn = hnets.build_model("cnn").eval()
    cnn_report = feature_equivariance(cnn, images, [90])
    assert cnn_report["logits"][0] > 100 * max(report["logits"][0], 1e-7)
    assert math.isfinite(sum(cnn_report["layers"][0]))
