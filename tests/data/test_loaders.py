"""make_loader: batches, reproducible shuffling, pinning only for CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import SequentialSampler

from hnets.data import RotMNIST, make_loader


@pytest.fixture
def dataset(tmp_path: Path, kit) -> RotMNIST:
    kit.write_synthetic_variant(tmp_path, "standin", sizes=(40, 10, 10))
    return RotMNIST(tmp_path, "train")


def _order(loader) -> list[int]:
    return torch.cat([labels for _, labels in loader]).tolist()


def test_batches(dataset: RotMNIST) -> None:
    loader = make_loader(dataset, 16, shuffle=False)
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [16, 16, 8]
    images, labels = batches[0]
    assert images.shape == (16, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert torch.equal(images, dataset.images[:16])
    assert len(list(make_loader(dataset, 16, shuffle=False, drop_last=True))) == 2
    assert not loader.pin_memory


def test_seeded_shuffle_is_reproducible(dataset: RotMNIST) -> None:
    first = torch.cat([x for x, _ in make_loader(dataset, 8, shuffle=True, seed=3)])
    again = torch.cat([x for x, _ in make_loader(dataset, 8, shuffle=True, seed=3)])
    other = torch.cat([x for x, _ in make_loader(dataset, 8, shuffle=True, seed=4)])
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, dataset.images)  # actually shuffled
    assert torch.allclose(first.sum(0), dataset.images.sum(0), atol=1e-4)  # a permutation


def test_sampler_overrides_shuffle(dataset: RotMNIST) -> None:
    loader = make_loader(dataset, 10, shuffle=True, sampler=SequentialSampler(dataset))
    assert _order(loader) == dataset.labels.tolist()


def test_pinning_follows_the_device(dataset: RotMNIST) -> None:
    loader = make_loader(dataset, 4, shuffle=False, device="cuda")
    assert loader.pin_memory == torch.cuda.is_available()
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(dataset, 0, shuffle=False)


def test_worker_processes(dataset: RotMNIST) -> None:
    order = _order(make_loader(dataset, 20, shuffle=True, num_workers=1, seed=0))
    assert sorted(order) == sorted(dataset.labels.tolist())
    assert order == _order(make_loader(dataset, 20, shuffle=True, seed=0))
