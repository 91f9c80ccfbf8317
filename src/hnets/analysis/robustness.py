"""Accuracy of trained models under rotation: ``hnets robustness``.

* :func:`robustness_curve`: test accuracy when every image is rotated further by
  0, 15, ..., 345 degrees. An equivariant model with an invariant read-out should
  be flat up to discretisation; a plain CNN only knows the orientations it saw.
* :func:`accuracy_by_angle`: accuracy binned by the rotation each test image
  already has (no further resampling).
* :func:`robustness_study`: either, for several checkpoints; JSON, CSV and a figure.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write, save_figure, write_json
from .._outputs import ROBUSTNESS_OUT
from ..data import rotate_images
from ._shared import accuracy, check_classes, correct_mask, load, load_test_split
from .crisp import protocol_originals_of

__all__ = ["robustness_curve", "accuracy_by_angle", "robustness_study", "robustness_files"]


def robustness_curve(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    angles_degrees: Sequence[float],
    *,
    batch_size: int = 500,
) -> list[float]:
    """Accuracy of ``model`` with all ``images`` rotated by each angle (bilinear, about centre)."""
    model.eval()
    accuracies = []
    for degrees in angles_degrees:
        turned = images if degrees % 360 == 0 else rotate_images(images, math.radians(degrees))
        accuracies.append(accuracy(model, turned, labels, batch_size))
    return accuracies


def accuracy_by_angle(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    angles: torch.Tensor,
    step_degrees: float,
    *,
    batch_size: int = 500,
) -> tuple[list[float], list[float], list[int]]:
    """Accuracy binned by each image's own rotation angle (bins of ``step_degrees``).

    Uses the angles stored with the stand-in: no further resampling of the images.
    Returns the bin centres (degrees), the accuracy in each bin and its image count.
    """
    model.eval()
    hits = correct_mask(model, images, labels, batch_size)
    degrees = torch.rad2deg(angles.double()) % 360
    n_bins = int(math.ceil(360 / step_degrees - 1e-9))
    bins = (degrees // step_degrees).long().clamp(max=n_bins - 1)
    centres, accs, counts = [], [], []
    for b in range(n_bins):
        picked = bins == b
        n = int(picked.sum())
        centres.append((b + 0.5) * step_degrees)
        accs.append(float(hits[picked].double().mean()) if n else math.nan)
        counts.append(n)
    return centres, accs, counts


def _label(checkpoint: str | Path, name: str) -> str:
    return f"{name} ({Path(checkpoint).name})"


#: A robustness result's ``mode``: what was rotated, and how accuracy was binned.
_EXTRA, _BY_STORED_ANGLE, _ORIGINALS = (
    "extra rotation",
    "by stored angle",
    "rotation of the unrotated originals",
)
_X_LABELS = {
    _EXTRA: "extra rotation of every test image (degrees)",
    _BY_STORED_ANGLE: "rotation of the test image (degrees, bin centre)",
    _ORIGINALS: "rotation of every unrotated test image (degrees)",
}


def robustness_study(
    checkpoints: Sequence[str | Path],
    *,
    step_degrees: float = 15.0,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    variant: str | None = None,
    out_dir: Path = Path(ROBUSTNESS_OUT),
    by_stored_angle: bool = False,
    dataset: str | None = None,
    originals: bool = False,
) -> dict[str, Any]:
    """Run :func:`robustness_curve` for each checkpoint; write JSON, CSV and one figure.

    The test images are those of the first checkpoint's dataset (or ``dataset``,
    which must have its classes; see :func:`hnets.data.model_data.load_checkpoint_data`),
    every checkpoint must predict the same classes. With ``by_stored_angle`` the
    test images are not rotated further: accuracy is binned by the rotation each
    image already has (:func:`accuracy_by_angle`; the variants built by hnets store
    it), which is what a model trained on upright images should be judged by. With
    ``originals`` the images rotated are the test images' unrotated originals
    (:func:`protocol_originals_of`: crisp, as a photographed digit or garment would
    be), so the curve starts from upright, un-resampled images.
    """
    if step_degrees <= 0 or step_degrees > 360:
        raise ValueError(f"--step must be in (0, 360] degrees; got {step_degrees}")
    if originals and by_stored_angle:
        raise ValueError("--originals rotates the unrotated originals, which have no stored "
                         "angle: drop --by-stored-angle or --originals")  # fmt: skip
    models = [load(checkpoint) for checkpoint in checkpoints]
    test = load_test_split(models[0][0], dataset, variant, data_dir, limit)
    for (model, _), checkpoint in zip(models, checkpoints, strict=True):
        check_classes(model, test, checkpoint)
    if by_stored_angle and test.angles is None:
        raise ValueError(
            f"the {test.variant} data stores no rotation angles: drop --by-stored-angle"
        )
    labelled = [
        (_label(c, name), model) for c, (model, name) in zip(checkpoints, models, strict=True)
    ]
    angles, curves, counts = _curves(labelled, test, step_degrees, by_stored_angle, originals)
    result = {
        "angles_degrees": angles,
        "n_images": len(test),
        "data": str(test.root),
        "dataset": test.name,
        "variant": test.variant,
        "mode": _BY_STORED_ANGLE if by_stored_angle else _ORIGINALS if originals else _EXTRA,
        "images_per_angle": counts,
        "accuracy": curves,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    files = robustness_files(out_dir)
    write_json(files[0], result)
    _write_robustness_csv(files[1], angles, curves)
    _save_robustness_figure(files[2], angles, curves, test, result["mode"])
    return {"result": result, "files": files, "table": _robustness_table(angles, curves)}


def _curves(
    labelled: list[tuple[str, nn.Module]],
    test: Any,
    step_degrees: float,
    by_stored_angle: bool,
    originals: bool,
) -> tuple[list[float], dict[str, list[float]], list[int] | None]:
    """The angles, each model's accuracy at them, and the images per angle (binned only)."""
    curves: dict[str, list[float]] = {}
    if by_stored_angle:
        for label, model in labelled:
            angles, curves[label], counts = accuracy_by_angle(
                model, test.images, test.labels, test.angles, step_degrees
            )
        return angles, curves, counts
    angles = [i * step_degrees for i in range(int(math.ceil(360 / step_degrees - 1e-9)))]
    images = protocol_originals_of(test) if originals else test.images
    for label, model in labelled:
        curves[label] = robustness_curve(model, images, test.labels, angles)
    return angles, curves, None


def robustness_files(out_dir: Path) -> list[Path]:
    """What :func:`robustness_study` writes into ``out_dir``: its JSON, CSV and figure."""
    return [out_dir / f"robustness.{ext}" for ext in ("json", "csv", "png")]


def _write_robustness_csv(path: Path, angles: list[float], curves: dict[str, list[float]]) -> None:
    """One row per angle, one accuracy column per model, written atomically."""
    with atomic_write(path, "w") as fh:
        writer = csv.writer(fh)
        writer.writerow(["angle_degrees", *curves])
        for i, angle in enumerate(angles):
            writer.writerow([angle, *(f"{curves[k][i]:.5f}" for k in curves)])


def _save_robustness_figure(
    path: Path,
    angles: list[float],
    curves: dict[str, list[float]],
    test: Any,
    mode: str,
) -> None:
    """Accuracy (%) against angle, one line per model, saved to ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for label, accs in curves.items():
        ax.plot(angles, [100 * a for a in accs], "o-", label=label)
    ax.set_xlabel(_X_LABELS[mode])
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(range(0, 361, 45))
    ax.grid(alpha=0.3)
    ax.legend()
    if mode == _ORIGINALS:
        ax.set_title(f"{test.title}, the unrotated originals of {len(test)} test images")
    else:
        ax.set_title(f"{test.title} ({test.variant}), {len(test)} test images")
    save_figure(fig, path)


def _robustness_table(angles: list[float], curves: dict[str, list[float]]) -> str:
    """A text table: one row per angle, one accuracy (%) column per model."""
    header = "angle  " + "  ".join(f"{k:>28s}" for k in curves)
    rows = [
        f"{a:5.0f}  " + "  ".join(f"{100 * curves[k][i]:27.2f}%" for k in curves)
        for i, a in enumerate(angles)
    ]
    return "\n".join([header, *rows])
