"""The model a run builds for its data: H-Net stages by image size, options on top."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hnets.models import HNet, HNetMNIST, RegularCNN
from hnets.training import TrainConfig
from hnets.training.setup import build_for


def _data(channels: int, side: int, classes: int = 5) -> SimpleNamespace:
    images = torch.zeros(2, channels, side, side)
    return SimpleNamespace(train=SimpleNamespace(channels=channels, classes=list(range(classes)),
                                                 images=images))  # fmt: skip


@pytest.mark.parametrize("side", [28, 32])
def test_small_images_get_the_mnist_hnet_as_before(side):
    model = build_for(TrainConfig(model="hnet"), _data(3, side))
    assert type(model) is HNetMNIST
    assert not {"channels", "depth", "pool"} & set(model.hnets_config["options"])


def test_a_96_pixel_rgb_folder_gets_four_stages_recorded_in_the_options():
    model = build_for(TrainConfig(model="hnet"), _data(3, 96))
    assert type(model) is HNet and model.bias.shape == (5,)
    options = model.hnets_config["options"]
    assert options["channels"] == [8, 16, 32, 64] and options["pool"] == [2, 2, 2, 1]
    assert [b.conv.in_channels for b in model.features][:2] == [3, 8]


def test_model_options_that_set_the_stages_replace_the_default():
    config = TrainConfig(
        model="hnet", model_options={"channels": [4, 8], "depth": 1, "pool": [2, 1]}
    )
    model = build_for(config, _data(3, 96))
    assert model.hnets_config["options"]["channels"] == [4, 8] and len(model.features) == 2
    assert type(build_for(TrainConfig(model="cnn"), _data(3, 96))) is RegularCNN
