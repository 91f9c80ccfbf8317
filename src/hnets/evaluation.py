"""Test metrics, predictions on image files, and the figures that report them.

:func:`evaluate` scores a model on in-memory tensors (every image counts: no
batch is dropped; a saved model on a split of its data, what ``hnets test`` runs, is
:func:`hnets.analysis.scores.evaluate_checkpoint`); :func:`predict` /
:func:`iter_predictions` classify image files in batches, decoding only one batch at
a time; :func:`plot_confusion` and
:func:`plot_curves` draw the figures, written atomically as PNG.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._io import save_figure
from .checkpoint import checkpoint_classes, checkpoint_dataset
from .images import load_image

__all__ = [
    "batched_logits",
    "evaluate",
    "predict",
    "iter_predictions",
    "plot_confusion",
    "plot_curves",
]


def batched_logits(
    model: nn.Module,
    images: torch.Tensor,
    *aligned: torch.Tensor,
    batch_size: int = 500,
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Run ``model`` over ``images`` ``batch_size`` at a time, in inference mode.

    Each batch moves to ``device`` (default: where the model's parameters are)
    just before its forward pass, so only one batch is on the device at a time;
    the model's mode is left as it is (callers put it in eval mode).

    Shape:
        images ``(N, ...)`` and each of ``aligned`` ``(N, ...)`` (labels, angles:
        tensors indexed like the images) -> per batch ``(logits, *aligned_batch)``,
        logits ``(b, C)`` with ``b <= batch_size`` and the aligned slices moved to
        the same device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    for start in range(0, int(images.shape[0]), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        with torch.inference_mode():
            logits = model(x)
        rest = (t[start : start + batch_size].to(device, non_blocking=True) for t in aligned)
        yield (logits, *rest)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 500,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Accuracy, loss and confusion matrix of ``model`` on every image given.

    The model is put in eval mode (and left there) and run under
    ``torch.inference_mode``; batches move to ``device`` (default: where the
    model's parameters are) one at a time.

    Args:
        model: images ``(B, 1, 28, 28)`` -> logits ``(B, C)``.
        images: ``(N, 1, 28, 28)``.
        labels: ``(N,)`` integers in ``0..C-1``.
        batch_size: images per forward pass.
        device: where to run.

    Returns:
        ``accuracy`` and ``error`` (fractions), ``n``, ``correct``, ``loss`` (mean
        cross-entropy, no label smoothing), ``per_class_accuracy`` (a list of ``C``
        fractions, ``None`` for a class with no images) and ``confusion`` (``C x C``
        counts, rows the true class, columns the prediction).
    """
    n = int(labels.shape[0])
    if n == 0 or images.shape[0] != n:
        raise ValueError(
            f"need as many images as labels (and at least one): {images.shape[0]}, {n}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    loss_sum, confusion = 0.0, None
    for logits, y in batched_logits(model, images, labels, batch_size=batch_size, device=device):
        logits, y = logits.float(), y.long()
        n_classes = logits.shape[1]
        if confusion is None:
            confusion = torch.zeros(n_classes * n_classes, dtype=torch.long, device=logits.device)
        if int(y.min()) < 0 or int(y.max()) >= n_classes:
            raise ValueError(f"labels must lie in 0..{n_classes - 1}")
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        confusion += torch.bincount(y * n_classes + logits.argmax(dim=1), minlength=n_classes**2)
    matrix = confusion.view(n_classes, n_classes).cpu()
    correct = int(matrix.diagonal().sum())
    per_class = [
        (int(matrix[c, c]) / int(row_total)) if int(row_total) else None
        for c, row_total in enumerate(matrix.sum(dim=1))
    ]
    return {
        "accuracy": correct / n,
        "error": 1.0 - correct / n,
        "n": n,
        "correct": correct,
        "loss": loss_sum / n,
        "per_class_accuracy": per_class,
        "confusion": matrix.tolist(),
    }


def iter_predictions(
    model: nn.Module,
    paths: Iterable[str | os.PathLike[str]],
    *,
    batch_size: int = 256,
    top: int = 3,
    device: str | torch.device | None = None,
    classes: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Classify image files, yielding one result per file in order.

    Images are decoded and preprocessed as the model's dataset was made
    (:func:`hnets.images.load_image`, MNIST's recipe, for Rot-MNIST models;
    :func:`hnets.images.load_garment`, Fashion-MNIST's, for Rot-Fashion-MNIST ones;
    :func:`hnets.images.load_image_as`, the folder's resizing, for a folder dataset)
    ``batch_size`` at a time, so memory stays bounded however many files there are.

    Args:
        classes: class names in logit order (default: those the model's checkpoint
            records, else the class indices as strings).

    Yields:
        ``{"path", "label", "class", "probability", "top": [{"label", "class",
        "probability"}, ...]}`` with the ``top`` most probable classes, most
        probable first (``label`` the class index, ``class`` its name).

    Raises:
        HNetsError: a file that is not a readable image (named in the message).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    device = torch.device(device) if device is not None else _model_device(model)
    config = getattr(model, "hnets_checkpoint", {})
    if classes is None and config:
        classes = checkpoint_classes(config)
    load = _image_loader(config)
    model.eval()
    iterator = iter(paths)
    while batch := list(itertools.islice(iterator, batch_size)):
        x = torch.stack([load(path) for path in batch]).to(device)
        with torch.inference_mode():
            probs = torch.softmax(model(x).float(), dim=1).cpu()
        if classes is not None and len(classes) != probs.shape[1]:
            raise ValueError(f"{len(classes)} class names for {probs.shape[1]} logits")
        values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
        for path, p, c in zip(batch, values.tolist(), indices.tolist(), strict=True):
            ranked = [
                {
                    "label": int(k),
                    "class": classes[k] if classes is not None else str(k),
                    "probability": float(v),
                }
                for k, v in zip(c, p, strict=True)
            ]
            yield {
                "path": str(path),
                "label": ranked[0]["label"],
                "class": ranked[0]["class"],
                "probability": ranked[0]["probability"],
                "top": ranked,
            }


def predict(
    model: nn.Module,
    paths: Iterable[str | os.PathLike[str]],
    *,
    batch_size: int = 256,
    top: int = 3,
    device: str | torch.device | None = None,
    classes: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """:func:`iter_predictions` collected into a list (results are small; images are not kept)."""
    return list(
        iter_predictions(
            model, paths, batch_size=batch_size, top=top, device=device, classes=classes
        )
    )


def plot_confusion(
    confusion: Sequence[Sequence[int]],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    classes: Sequence[str] | None = None,
) -> Path:
    """Draw a confusion matrix (rows true, columns predicted; counts and row shares).

    ``classes`` names the rows and columns (default: their indices).
    """
    from matplotlib.figure import Figure

    matrix = torch.tensor(confusion, dtype=torch.float64)
    n_classes = matrix.shape[0]
    shares = matrix / matrix.sum(dim=1, keepdim=True).clamp(min=1)
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(shares.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    for i, j in itertools.product(range(n_classes), repeat=2):
        if matrix[i, j] > 0:
            colour = "white" if shares[i, j] > 0.5 else "black"
            ax.text(
                j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color=colour
            )
    if classes is None:
        ax.set_xticks(range(n_classes))
        ax.set_yticks(range(n_classes))
    else:
        names = [str(c) for c in classes]
        rotate = max(len(n) for n in names) > 2
        ax.set_xticks(range(n_classes), names, rotation=45 if rotate else 0, fontsize=7)
        ax.set_yticks(range(n_classes), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.colorbar(im, ax=ax, label="share of the true class")
    return save_figure(fig, path)


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Loss and accuracy against epoch, training and validation (from ``metrics.jsonl`` rows)."""
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9.6, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [row[f"train_{key}"] for row in history], "o-", label="train")
        validated = [row for row in history if row.get(f"valid_{key}") is not None]
        if validated:  # every epoch, or every valid_every epochs
            ax.plot(
                [row["epoch"] for row in validated],
                [row[f"valid_{key}"] for row in validated],
                "s-",
                label="valid",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def _model_device(model: nn.Module) -> torch.device:
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    return param.device if param is not None else torch.device("cpu")


def _image_loader(config: Mapping[str, Any]) -> Callable[[str | os.PathLike[str]], torch.Tensor]:
    """How to turn an image file into the input of the model a checkpoint describes."""
    from . import images
    from .data.registry import DATASETS

    if not config:
        return load_image
    spec = DATASETS.get(checkpoint_dataset(config))
    if spec is not None and spec.preprocess == "digit":
        return load_image
    if spec is not None and spec.preprocess == "garment":
        return images.load_garment
    shape = config.get("extra", {}).get("image_shape") or [1, 28, 28]
    channels, size = int(shape[0]), int(shape[-1])
    return lambda path: torch.from_numpy(images.load_image_as(path, size=size, channels=channels))
