"""Metrics on tensors, predictions on files, and the report figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

import hnets.evaluation as evaluation
from hnets import build_model
from hnets.errors import HNetsError
from hnets.evaluation import (
    batched_logits,
    evaluate,
    iter_predictions,
    plot_confusion,
    plot_curves,
    predict,
)

pytestmark = pytest.mark.usefixtures("one_thread")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class LookupModel(nn.Module):
    """Predicts the class stored in the image's first pixel; logits are fixed per class."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)))
        self.calls: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.training or torch.is_grad_enabled())
        return self.table[x[:, 0, 0, 0].long()]


def test_metrics_count_every_image_in_odd_batches():
    torch.manual_seed(0)
    model = LookupModel()
    n = 23  # not a multiple of the batch size: nothing may be dropped
    labels = torch.randint(0, 9, (n,))  # class 9 never occurs
    predicted = model.table.argmax(dim=1)
    images = torch.zeros(n, 1, 28, 28)
    images[:, 0, 0, 0] = labels.float()
    result = evaluate(model, images, labels, batch_size=5)

    expected_correct = int((predicted[labels] == labels).sum())
    assert result["n"] == n and result["correct"] == expected_correct
    assert result["accuracy"] == pytest.approx(expected_correct / n)
    assert result["error"] == pytest.approx(1 - expected_correct / n)
    reference_loss = F.cross_entropy(model.table[labels], labels).item()
    assert result["loss"] == pytest.approx(reference_loss, rel=1e-5)
    confusion = np.array(result["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == n
    for c in range(10):
        assert confusion[c].sum() == int((labels == c).sum())
    assert result["per_class_accuracy"][9] is None
    for c in set(labels.tolist()):
        assert result["per_class_accuracy"][c] == float(predicted[c] == c)
    assert not any(model.calls), "evaluation must run in eval mode without autograd"


def test_bad_inputs():
    model = LookupModel()
    with pytest.raises(ValueError):
        evaluate(model, torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError):
        evaluate(model, torch.zeros(3, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        evaluate(model, torch.zeros(2, 1, 28, 28), torch.tensor([0, 12]))


def _digit_files(tmp_path, n):
    paths = []
    for i in range(n):
        img = Image.new("L", (40 + i, 50), 0)
        ImageDraw.Draw(img).ellipse([8, 8, 30 + i // 2, 42], outline=255, width=4 + i % 3)
        path = tmp_path / f"digit{i}.png"
        img.save(path)
        paths.append(path)
    return paths


def test_predict_returns_ranked_classes_in_file_order(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn", width=0.5).eval()
    paths = _digit_files(tmp_path, 5)
    results = predict(model, paths, batch_size=2, top=3)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    for r in results:
        probs = [t["probability"] for t in r["top"]]
        assert len(r["top"]) == 3 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6
        assert r["label"] == r["top"][0]["label"] and r["probability"] == probs[0]
    x = torch.stack([evaluation.load_image(p) for p in paths])
    with torch.no_grad():
        assert [r["label"] for r in results] == model(x).argmax(1).tolist()
    assert len(predict(model, paths[:1], top=20)[0]["top"]) == 10


def test_predictions_stream_one_batch_at_a_time(tmp_path, monkeypatch):
    loaded = []
    real = evaluation.load_image
    monkeypatch.setattr(evaluation, "load_image", lambda p: loaded.append(p) or real(p))
    paths = _digit_files(tmp_path, 2) * 50  # 100 files
    stream = iter_predictions(build_model("cnn", width=0.5), iter(paths), batch_size=8)
    next(stream)
    assert len(loaded) == 8  # only the first batch decoded so far
    assert sum(1 for _ in stream) == 99 and len(loaded) == 100


def test_a_bad_file_stops_prediction_with_its_name(tmp_path):
    paths = _digit_files(tmp_path, 2)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(HNetsError, match="notes.png"):
        predict(build_model("cnn", width=0.5), [*paths, bad])


def test_figures_are_png_files_written_atomically(tmp_path):
    confusion = np.diag(np.arange(10) + 5).tolist()
    confusion[3][5] = 7
    path = plot_confusion(confusion, tmp_path / "confusion.png", title="test")
    assert path.read_bytes().startswith(PNG_MAGIC)
    history = [
        {"epoch": 1, "train_loss": 2.0, "train_acc": 0.3, "valid_loss": 1.9, "valid_acc": 0.4},
        {"epoch": 2, "train_loss": 1.0, "train_acc": 0.6, "valid_loss": 1.1, "valid_acc": 0.6},
    ]
    assert plot_curves(history, tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
    no_valid = [{**row, "valid_loss": None, "valid_acc": None} for row in history]
    assert plot_curves(no_valid, tmp_path / "c2.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c2.png", "confusion.png", "curves.png"]


def test_batched_logits_sees_every_image_once_in_order_whatever_the_batch():
    model = torch.nn.Flatten()
    images = torch.arange(23.0).reshape(23, 1, 1, 1)
    labels = torch.arange(23)
    for batch_size in (1, 5, 23, 100):
        batches = list(batched_logits(model, images, labels, batch_size=batch_size))
        assert all(len(logits) <= batch_size for logits, _ in batches)
        assert torch.equal(torch.cat([logits for logits, _ in batches]).flatten(), images.flatten())
        assert torch.equal(torch.cat([y for _, y in batches]), labels)
    with pytest.raises(ValueError, match="batch_size"):
        next(batched_logits(model, images, batch_size=0))
