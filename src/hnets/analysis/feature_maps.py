"""How far a trained model's logits and feature maps are from following a rotation of its input.

Behind ``hnets equivariance``: :func:`feature_equivariance` measures, per angle, the
logits' change (invariance) and each layer's deviation from rotating with the
input; :func:`equivariance_study` runs it on a few test images of a checkpoint's
dataset and draws one layer's maps for an image and its turned copy. The
measures (:func:`hnets.equivariance.relative_error`, the central disc) are
:mod:`hnets.equivariance`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import save_figure, write_json
from .._outputs import EQUIVARIANCE_OUT
from ..data import rotate_images
from ..equivariance import check_equivariance, disc_mask, relative_error
from ..nn import magnitude
from ._shared import load, load_test_split

__all__ = ["feature_equivariance", "equivariance_study"]


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
    out_dir: Path = Path(EQUIVARIANCE_OUT),
    dataset: str | None = None,
) -> dict[str, Any]:
    """:func:`feature_equivariance` on a few test images; JSON report and a feature-map figure.

    The images come from the checkpoint's dataset (or a compatible ``dataset``).
    """
    if n_digits < 1:
        raise ValueError(f"--images must be >= 1; got {n_digits}")
    model, name = load(checkpoint)
    test = load_test_split(model, dataset, variant, data_dir, n_digits)
    report = feature_equivariance(model, test.images, angles_degrees)
    report.update({"model": name, "checkpoint": str(checkpoint), "n_digits": len(test)})
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "equivariance.json", out_dir / "feature_maps.png"]
    write_json(files[0], report)
    _save_feature_map_figure(files[1], model, name, test.images[:1])
    return {"report": report, "files": files, "table": _equivariance_table(report)}


def _save_feature_map_figure(path: Path, model: nn.Module, name: str, digit: torch.Tensor) -> None:
    """A test image, the image turned by 45 degrees, and one mid-level map of each."""
    from matplotlib.figure import Figure

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
    save_figure(fig, path)


def _equivariance_table(report: dict[str, Any]) -> str:
    """A text table: one row per angle, the logits' deviation, its floor, each layer's."""
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
    return "\n".join([header, *rows])
