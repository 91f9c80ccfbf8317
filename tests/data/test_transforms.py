"""Rotation about the grid centre and random-rotation augmentation."""

from __future__ import annotations

import math

import pytest
import torch

from hnets.data import RandomRotation, random_rotate_batch, rotate_images


@pytest.mark.parametrize("size", [28, 27, 8])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_quarter_turns_match_rot90(k: int, size: int) -> None:
    images = torch.rand(4, 2, size, size, generator=torch.Generator().manual_seed(k))
    rotated = rotate_images(images, k * math.pi / 2)
    expected = torch.rot90(images, k, dims=(-2, -1))
    assert torch.allclose(rotated, expected, atol=1e-5)


def test_direction_is_counter_clockwise_as_displayed() -> None:
    image = torch.zeros(1, 5, 5)
    image[0, 0, 2] = 1.0  # top centre
    rotated = rotate_images(image, math.pi / 2)
    assert rotated.shape == (1, 5, 5)
    assert rotated[0, 2, 0] == pytest.approx(1.0, abs=1e-5)  # now left centre
    assert rotated.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_per_sample_angles() -> None:
    images = torch.rand(3, 1, 16, 16)
    angles = torch.tensor([0.0, math.pi / 2, math.pi])
    rotated = rotate_images(images, angles)
    for i, k in enumerate([0, 1, 2]):
        assert torch.allclose(rotated[i], torch.rot90(images[i], k, dims=(-2, -1)), atol=1e-5)


def test_round_trip_restores_the_centre() -> None:
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = torch.exp(-((xx - 16) ** 2 + (yy - 11) ** 2) / 20.0).expand(2, 1, 28, 28)
    back = rotate_images(rotate_images(blob, 0.7), -0.7)
    assert (back - blob).abs().max().item() < 0.05  # two bilinear resamplings blur a little
    assert (rotate_images(blob, 0.7) - blob).abs().max().item() > 0.3


def test_corners_are_zero_filled() -> None:
    ones = torch.ones(1, 1, 28, 28)
    rotated = rotate_images(ones, math.pi / 4)
    assert rotated[0, 0, 0, 0].item() == 0.0
    assert rotated[0, 0, 14, 14].item() == pytest.approx(1.0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="B, C, H, W"):
        rotate_images(torch.rand(28, 28), 0.1)
    with pytest.raises(ValueError, match="floating"):
        rotate_images(torch.zeros(1, 28, 28, dtype=torch.uint8), 0.1)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        rotate_images(torch.rand(2, 28, 28), torch.zeros(3))


def test_random_rotation_is_reproducible_with_a_generator() -> None:
    images = torch.rand(6, 1, 28, 28)
    a, angles_a = random_rotate_batch(images, torch.Generator().manual_seed(3), return_angles=True)
    b, angles_b = random_rotate_batch(images, torch.Generator().manual_seed(3), return_angles=True)
    assert torch.equal(a, b) and torch.equal(angles_a, angles_b)
    assert ((angles_a >= 0) & (angles_a < 2 * math.pi)).all()
    assert torch.allclose(a, rotate_images(images, angles_a))
    c = random_rotate_batch(images, torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)


def test_random_rotation_module_probability() -> None:
    images = torch.rand(64, 1, 12, 12)
    assert torch.equal(RandomRotation(p=0.0)(images), images)
    half = RandomRotation(p=0.5, generator=torch.Generator().manual_seed(0))(images)
    unchanged = (half == images).flatten(1).all(dim=1)
    assert 10 < int(unchanged.sum()) < 54
    everything = RandomRotation(p=1.0, generator=torch.Generator().manual_seed(0))(images)
    assert not (everything == images).flatten(1).all(dim=1).any()
    assert "p=0.5" in repr(RandomRotation(p=0.5))
    with pytest.raises(ValueError):
        RandomRotation(p=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rotation_on_cuda_matches_cpu() -> None:
    images = torch.rand(8, 1, 28, 28)
    angles = torch.rand(8) * 6.28
    on_gpu = rotate_images(images.cuda(), angles.cuda()).cpu()
    assert torch.allclose(on_gpu, rotate_images(images, angles), atol=1e-5)
