"""``hnets test``: a saved model scored on a split of its data, with what it prints.

:func:`evaluate_checkpoint` loads the model, the data it was trained on (or a
compatible dataset), computes :func:`hnets.evaluation.evaluate`'s metrics and, when
asked, the crisp-input accuracies (:mod:`hnets.analysis.crisp`) and the confusion
figure; :func:`format_evaluation` gives the lines the command prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..checkpoint import load_model
from ..data.model_data import load_checkpoint_data
from ..evaluation import evaluate, plot_confusion
from ..nn import EvalBlur
from .crisp import crisp_accuracy, protocol_originals_of

__all__ = ["evaluate_checkpoint", "format_evaluation"]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    split: str = "test",
    dataset: str | None = None,
    variant: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 500,
    device: str | torch.device | None = None,
    eval_blur: float | None = None,
    crisp: bool = False,
    figure: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a saved model on a split of its dataset (or of a compatible one).

    Nothing is written but ``figure``, and only when asked: the checkpoint, the data
    and every other file are left as they are.

    Args:
        checkpoint: a checkpoint directory or a pretrained model's name
            (:func:`hnets.load_model`).
        split: ``test`` or ``valid``.
        dataset, variant, data_dir: the data (default: what the model was trained on;
            see :func:`hnets.data.model_data.load_checkpoint_data`).
        limit: score only the first ``limit`` images.
        batch_size: images per forward pass.
        device: where to run (default CPU).
        eval_blur: score with this input low-pass (pixels, 0: none) instead of the
            model's own; the checkpoint is not changed.
        crisp: also score the split's unrotated originals and their exact quarter
            turns (datasets built by the rotation protocol; checked before any work).
        figure: where to draw the confusion matrix (PNG), if anywhere.
        progress: progress bars while data is prepared.

    Returns:
        :func:`evaluate`'s metrics with ``checkpoint``, ``model``, ``split``,
        ``dataset``, ``title``, ``variant``, ``eval_blur``, ``classes``, ``figure``
        (the path written or ``None``) and, with ``crisp``, ``crisp``
        (:func:`hnets.analysis.crisp_accuracy`).

    Raises:
        ValueError: a bad ``split`` or ``limit``.
        HNetsError: a bad checkpoint, missing or incompatible data.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"--split must be valid or test, got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError("--limit must be at least 1")
    model = _load(checkpoint, device, eval_blur)
    config = model.hnets_checkpoint
    data = load_checkpoint_data(
        config,
        split,
        dataset=dataset,
        variant=variant,
        data_dir=data_dir,
        limit=limit,
        progress=progress,
    )
    originals = None
    if crisp:  # before anything is computed or written: it may be refused
        originals = protocol_originals_of(data)
    result = evaluate(model, data.images, data.labels, batch_size=batch_size)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "model": config["model"],
        "split": split,
        "dataset": data.name,
        "title": data.title,
        "variant": data.variant,
        "eval_blur": model.eval_blur.sigma,
        "classes": list(data.classes),
        **result,
        "figure": None,
    }
    if originals is not None:
        report["crisp"] = crisp_accuracy(
            model, originals, data.images, data.labels, batch_size=batch_size
        )
    if figure is not None:
        title = f"{config['model']} on {data.title} {data.variant} {split}: "
        plot_confusion(
            result["confusion"], figure, title=title + f"{result['accuracy']:.2%}",
            classes=data.classes,
        )  # fmt: skip
        report["figure"] = str(figure)
    return report


def _load(
    checkpoint: str | os.PathLike[str], device: str | torch.device | None, eval_blur: float | None
) -> torch.nn.Module:
    """The saved model, with ``eval_blur`` in place of its own input low-pass if given."""
    model = load_model(checkpoint, device)
    if eval_blur is not None:
        weight = next(iter(model.parameters()), None)
        where = weight.device if weight is not None else "cpu"
        model.eval_blur = EvalBlur(eval_blur).to(where).eval()
    return model


def format_evaluation(report: Mapping[str, Any]) -> str:
    """:func:`evaluate_checkpoint`'s report as the lines ``hnets test`` prints."""
    lines = [
        f"{report['model']} from {report['checkpoint']} on {report['title']} "
        f"{report['variant']}, {report['split']} split, {report['n']} images",
        f"accuracy {report['accuracy']:.2%}   error {report['error']:.2%}   "
        f"loss {report['loss']:.4f}",
        "per-class accuracy:",
        "  "
        + "  ".join(
            f"{c}: {_percent(a)}"
            for c, a in zip(report["classes"], report["per_class_accuracy"], strict=True)
        ),
        "confusion matrix (rows: true class, columns: predicted):",
        _format_matrix(report["confusion"]),
    ]
    crisp = report.get("crisp")
    if crisp is not None:
        lines.append(
            f"crisp inputs: as stored {_percent(crisp['rotated'])}, unrotated originals "
            f"{_percent(crisp['crisp_0'])}, turned 90° {_percent(crisp['crisp_90'])}, "
            f"180° {_percent(crisp['crisp_180'])}, 270° {_percent(crisp['crisp_270'])}"
        )
    if report.get("figure") is not None:
        lines.append(f"wrote {report['figure']}")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.1%}"


def _format_matrix(matrix: Sequence[Sequence[Any]]) -> str:
    width = max(5, *(len(str(v)) + 1 for row in matrix for v in row))
    header = "     " + "".join(f"{c:>{width}}" for c in range(len(matrix)))
    rows = [f"  {i:>2} " + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(matrix)]
    return "\n".join([header, *rows])
