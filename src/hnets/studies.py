"""The rotation studies behind ``hnets robustness`` and ``hnets equivariance``.

* :func:`robustness_curve`: test accuracy when every image is rotated further by
  0, 15, ..., 345 degrees. An equivariant model with an invariant read-out should
  be flat up to discretisation; a plain CNN only knows the orientations it saw.
* :func:`feature_equivariance`: how much the logits and each layer's feature maps
  deviate from rotating with the input, per angle.
* :func:`crisp_accuracy`: accuracy on the test images' unrotated originals and their
  exact quarter turns (crisp inputs, never resampled), beside the rotated test set.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._io import atomic_write, save_figure, write_json
from .data import rotate_images
from .equivariance import check_equivariance, disc_mask, relative_error
from .errors import DataError, HNetsError
from .nn import magnitude

__all__ = [
    "crisp_accuracy",
    "robustness_curve",
    "accuracy_by_angle",
    "robustness_study",
    "robustness_files",
    "feature_equivariance",
    "equivariance_study",
]


def _accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> float:
    correct = 0
    device = next((t.device for t in (*model.parameters(), *model.buffers())), images.device)
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            logits = model(images[start : start + batch_size].to(device))
            batch_labels = labels[start : start + batch_size].to(device)
            correct += int((logits.argmax(1) == batch_labels).sum())
    return correct / len(labels)


def protocol_originals_of(data: Any) -> torch.Tensor:
    """The unrotated originals ``(N, 1, H, W)`` of a split built by the rotation protocol.

    ``data`` is a loaded split (:func:`hnets.data.load_dataset`, or what
    :func:`hnets.checkpoint.load_checkpoint_data` returns) of Rot-MNIST's stand-in or
    Rot-Fashion-MNIST; sample ``i`` of the result is sample ``i`` of ``data`` before the
    protocol rotated it (crisp, never resampled). Needs the dataset's idx files.

    Raises:
        HNetsError: a dataset not built by the protocol here (the real Rot-MNIST, a
            folder), idx files not found, or originals that do not match ``data``.
    """
    from .data.mnist import find_idx_dir, load_idx_files, protocol_originals
    from .data.registry import DATASETS

    spec = DATASETS.get(getattr(data, "name", ""))
    if spec is None or spec.source is None or data.variant == "original":
        raise HNetsError(
            f"crisp originals exist only for datasets built here by the rotation protocol "
            f"(the Rot-MNIST stand-in, Rot-Fashion-MNIST); not for {data.name} {data.variant}"
        )
    idx_dir = find_idx_dir(spec)
    if idx_dir is None:
        raise HNetsError(f"crisp originals need the {spec.title} idx files: "
                         f"{spec.source.install_hint}")  # fmt: skip
    seed = int(data.manifest.get("seed") or 0)
    images, labels = protocol_originals(load_idx_files(idx_dir, spec.source), data.split,
                                        seed=seed)  # fmt: skip
    n = len(data)
    if not np.array_equal(labels[:n], data.labels.numpy()):
        raise HNetsError(f"{idx_dir}: the originals do not match {data.root} (another seed?)")
    return torch.from_numpy(images[:n]).unsqueeze(1)


def crisp_accuracy(
    model: nn.Module,
    originals: torch.Tensor,
    rotated: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 500,
) -> dict[str, float]:
    """Accuracy on crisp inputs next to the resampled ones they were made from.

    Args:
        originals: the unrotated test images ``(N, C, H, W)``
            (:func:`hnets.data.mnist.protocol_originals`).
        rotated: the same images as the test split stores them (rotated, bilinear).
        labels: ``(N,)``.

    Returns:
        ``{"rotated", "crisp_0", "crisp_90", "crisp_180", "crisp_270"}``: accuracy on
        the rotated test images, and on the originals turned by exact quarter turns
        (``torch.rot90``: no interpolation).
    """
    model.eval()
    out = {"rotated": _accuracy(model, rotated, labels, batch_size)}
    for k in range(4):
        turned = torch.rot90(originals, k, dims=(-2, -1)) if k else originals
        out[f"crisp_{90 * k}"] = _accuracy(model, turned, labels, batch_size)
    return out


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
        accuracies.append(_accuracy(model, turned, labels, batch_size))
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
    with torch.inference_mode():
        hits = torch.cat(
            [
                model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]
                for i in range(0, len(labels), batch_size)
            ]
        )
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


def _load(checkpoint: str | Path) -> tuple[nn.Module, str]:
    from .checkpoint import load_model

    model = load_model(checkpoint)
    return model, model.hnets_config["name"]


def _test_images(
    model: nn.Module,
    dataset: str | None,
    variant: str | None,
    data_dir: str | Path | None,
    limit: int | None,
) -> Any:
    from .checkpoint import load_checkpoint_data

    return load_checkpoint_data(
        model.hnets_checkpoint,
        "test",
        dataset=dataset,
        variant=variant,
        data_dir=data_dir,
        limit=limit,
        recorded_variant=False,
    )


def _check_classes(model: nn.Module, test: Any, checkpoint: str | Path) -> None:
    from .checkpoint import checkpoint_classes

    if checkpoint_classes(model.hnets_checkpoint) != tuple(test.classes):
        raise DataError(f"{checkpoint}: the model predicts other classes than {test.name} has")


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
    out_dir: Path = Path("robustness"),
    by_stored_angle: bool = False,
    dataset: str | None = None,
    originals: bool = False,
) -> dict[str, Any]:
    """Run :func:`robustness_curve` for each checkpoint; write JSON, CSV and one figure.

    The test images are those of the first checkpoint's dataset (or ``dataset``,
    which must have its classes; see :func:`hnets.checkpoint.load_checkpoint_data`),
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
    models = [_load(checkpoint) for checkpoint in checkpoints]
    test = _test_images(models[0][0], dataset, variant, data_dir, limit)
    for (model, _), checkpoint in zip(models, checkpoints, strict=True):
        _check_classes(model, test, checkpoint)
    angles = [i * step_degrees for i in range(int(math.ceil(360 / step_degrees - 1e-9)))]
    if by_stored_angle and test.angles is None:
        raise ValueError(
            f"the {test.variant} data stores no rotation angles: drop --by-stored-angle"
        )
    images = protocol_originals_of(test) if originals else test.images
    curves: dict[str, list[float]] = {}
    counts: list[int] | None = None
    for checkpoint, (model, name) in zip(checkpoints, models, strict=True):
        if by_stored_angle:
            angles, accs, counts = accuracy_by_angle(
                model, test.images, test.labels, test.angles, step_degrees
            )
        else:
            accs = robustness_curve(model, images, test.labels, angles)
        curves[_label(checkpoint, name)] = accs
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


def _feature_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-layer maps ``(B, C, H, W)``; for harmonic maps, magnitudes summed over orders."""
    maps: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if output.dim() == 6:  # harmonic map: |z| summed over rotation orders
            maps.append(magnitude(output).sum(dim=2))
        elif output.dim() == 4:
            maps.append(output)

    features = getattr(model, "features", None)
    layers = list(features.children()) if isinstance(features, nn.Sequential) else []
    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        with torch.inference_mode():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [logits, *maps]


def feature_equivariance(
    model: nn.Module, images: torch.Tensor, angles_degrees: Sequence[float]
) -> dict[str, Any]:
    """Relative deviation of logits and of each layer's maps from following a rotation of the input.

    For each angle: ``|f(R x) - f(x)| / |f(x)|`` for the logits (invariance) and, per
    layer, ``|F(R x) - R F(x)| / |R F(x)|`` inside the central disc of each map.
    Quarter turns rotate the grid exactly; other angles resample (bilinear), which
    itself blurs the digit: ``logits_resampling_floor`` is the logits' change under
    the round trip ``R(-a) R(a) x``, the part of the change that any model would see.
    """
    model.eval()
    base = _feature_maps(model, images)
    report: dict[str, Any] = {
        "angles_degrees": list(angles_degrees),
        "logits": [row.error for row in check_equivariance(model, images, angles_degrees)],
        "logits_resampling_floor": [],
        "layers": [],
    }
    for degrees in angles_degrees:
        quarter = degrees % 90 == 0
        k = int(degrees // 90) % 4

        def turn(
            t: torch.Tensor, degrees: float = degrees, k: int = k, q: bool = quarter
        ) -> torch.Tensor:
            return (
                torch.rot90(t, k, dims=(-2, -1)) if q else rotate_images(t, math.radians(degrees))
            )

        turned = _feature_maps(model, turn(images))
        floor = None
        if not quarter:
            there_and_back = rotate_images(
                rotate_images(images, math.radians(degrees)), -math.radians(degrees)
            )
            floor = relative_error(_feature_maps(model, there_and_back)[0], base[0])
        report["logits_resampling_floor"].append(floor)
        per_layer = []
        for got, ref in zip(turned[1:], base[1:], strict=True):
            mask = disc_mask(ref.shape[-1], ref.shape[-1] / 2 - 1.5)
            per_layer.append(relative_error(got, turn(ref), mask))
        report["layers"].append(per_layer)
    return report


def equivariance_study(
    checkpoint: str | Path,
    *,
    n_digits: int = 8,
    angles_degrees: Sequence[float] = (90, 180, 270, 15, 30, 45),
    data_dir: str | Path | None = None,
    variant: str | None = None,
    out_dir: Path = Path("equivariance"),
    dataset: str | None = None,
) -> dict[str, Any]:
    """:func:`feature_equivariance` on a few test images; JSON report and a feature-map figure.

    The images come from the checkpoint's dataset (or a compatible ``dataset``).
    """
    from matplotlib.figure import Figure

    if n_digits < 1:
        raise ValueError(f"--images must be >= 1; got {n_digits}")
    model, name = _load(checkpoint)
    test = _test_images(model, dataset, variant, data_dir, n_digits)
    report = feature_equivariance(model, test.images, angles_degrees)
    report.update({"model": name, "checkpoint": str(checkpoint), "n_digits": len(test)})
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "equivariance.json", out_dir / "feature_maps.png"]
    write_json(files[0], report)

    # figure: a digit, the digit turned by 45 degrees, and one mid-level map for both
    digit = test.images[:1]
    angle = 45.0
    turned = rotate_images(digit, math.radians(angle))
    maps = _feature_maps(model, torch.cat([digit, turned]))
    layer = min(2, len(maps) - 2)
    chosen = maps[1 + layer] if len(maps) > 1 else None
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    axes = fig.subplots(2, 3)
    titles = ["test image", f"layer {layer + 1} map", f"layer {layer + 1} map, turned back"]
    for row, (img, rot) in enumerate(((digit, 0.0), (turned, angle))):
        shown = img[0].permute(1, 2, 0).clamp(0, 1) if img.shape[1] == 3 else img[0, 0]
        axes[row, 0].imshow(shown.numpy(), cmap="gray")
        if chosen is not None:
            fmap = chosen[row : row + 1, :1]
            axes[row, 1].imshow(fmap[0, 0].numpy(), cmap="magma")
            back = rotate_images(fmap, -math.radians(rot)) if rot else fmap
            axes[row, 2].imshow(back[0, 0].numpy(), cmap="magma")
        for col in range(3):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            axes[row, col].set_title(f"{titles[col]}{' (input +45°)' if row else ''}", fontsize=9)
    fig.suptitle(f"{name}: feature maps follow the input's rotation", fontsize=10)
    save_figure(fig, files[1])

    n_layers = len(report["layers"][0]) if report["layers"] else 0
    header = "angle   logits  (floor)  " + "  ".join(f"layer{i + 1:>2d}" for i in range(n_layers))
    rows = [
        f"{a:5.0f}  {lg:8.2e}  {'    -   ' if fl is None else f'{fl:8.2e}'}  "
        + "  ".join(f"{v:7.1e}" for v in layers)
        for a, lg, fl, layers in zip(
            report["angles_degrees"],
            report["logits"],
            report["logits_resampling_floor"],
            report["layers"],
            strict=True,
        )
    ]
    return {"report": report, "files": files, "table": "\n".join([header, *rows])}
