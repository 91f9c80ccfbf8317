r"""Measuring rotation equivariance of layers and models.

For a layer :math:`f` on harmonic maps, exact equivariance to a counter-clockwise
rotation by :math:`k \cdot 90` degrees means
``f(rot90_harmonic(z, k)) == rot90_harmonic(f(z), k)``; for a model from images to
logits it means invariance, ``f(rot90(x, k)) == f(x)``. For other angles the pixel
grid cannot be rotated exactly; :func:`rotate_harmonic` resamples with bilinear
interpolation (:func:`hnets.data.rotate_images`), and errors are measured inside the
inscribed disc, where rotated
content stays inside the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .nn.functional import check_harmonic, magnitude, rot90_harmonic


def rotate_images(images: torch.Tensor, angle: float) -> torch.Tensor:
    """:func:`hnets.data.rotate_images`, imported when first used: importing
    ``hnets.data`` loads the dataset machinery, which the layers do not need."""
    from .data.transforms import rotate_images as rotate

    return rotate(images, angle)


__all__ = [
    "check_equivariance",
    "EquivarianceRow",
    "format_rows",
    "rot90_error",
    "rotate_harmonic",
    "disc_mask",
    "relative_error",
]


def rot90_error(module: nn.Module, x: torch.Tensor, k: int = 1) -> float:
    """Largest absolute deviation from exact equivariance (or invariance) under ``k`` quarter turns.

    ``x`` is either a harmonic map ``(B, C, M, 2, H, W)`` (then the output must be a
    harmonic map too, compared with :func:`rot90_harmonic`) or images ``(B, C, H, W)``
    (then the output is compared directly: invariance of logits or features).
    """
    with torch.no_grad():
        if x.dim() == 6:
            out = module(x)
            turned = module(rot90_harmonic(x, k))
            return (turned - rot90_harmonic(out, k)).abs().max().item()
        out = module(x)
        turned = module(torch.rot90(x, k, dims=(-2, -1)))
        if out.dim() == 4:  # an image-shaped output must turn with the input
            out = torch.rot90(out, k, dims=(-2, -1))
        return (turned - out).abs().max().item()


def rotate_harmonic(z: torch.Tensor, angle: float) -> torch.Tensor:
    r"""A rotation by ``angle`` acting on a harmonic map.

    Resamples every map, then multiplies order :math:`m` by :math:`e^{im\theta}`.
    """
    check_harmonic(z, channels=None, orders=None, where="rotate_harmonic")
    b, c, m, two, h, w = z.shape
    spun = rotate_images(z.reshape(b, c * m * two, h, w), angle).view(b, c, m, two, h, w)
    orders = torch.arange(m, dtype=z.dtype, device=z.device).view(1, 1, m, 1, 1)
    cos, sin = torch.cos(orders * angle), torch.sin(orders * angle)
    re, im = spun[:, :, :, 0], spun[:, :, :, 1]
    return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=3)


def disc_mask(
    size: int, radius: float | None = None, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean ``(size, size)`` mask: pixels within ``radius`` (default ``size/2 - 1``)."""
    radius = size / 2 - 1 if radius is None else radius
    coords = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    return coords.view(-1, 1) ** 2 + coords.view(1, -1) ** 2 <= radius**2


def relative_error(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``||a - b|| / ||b||`` over the masked positions (the last two dimensions)."""
    if mask is not None:
        a, b = a[..., mask], b[..., mask]
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@dataclass(frozen=True)
class EquivarianceRow:
    """One angle's result of :func:`check_equivariance`; ``str(row)`` is a printable line.

    Attributes:
        angle: the input's counter-clockwise rotation, in degrees.
        output: ``"logits"`` (invariant), ``"per-pixel"`` (maps that turn with the input),
            ``"magnitudes"`` (of a harmonic output: maps that turn, values invariant) or
            ``"harmonic"`` (a harmonic output, turned and phase-corrected by order).
        error: ``||f(R x) - R f(x)|| / ||R f(x)||`` (logits: ``R`` is the identity),
            over the inscribed disc for angles other than quarter turns.
        exact: the angle is a multiple of 90 degrees, where the grid turns exactly and
            the error is float round-off (given a model whose pooling and strides keep the
            grid centred; see :class:`hnets.models.HNet`).
    """

    angle: float
    output: str
    error: float
    exact: bool

    def __str__(self) -> str:
        kind = "quarter turn, exact up to round-off" if self.exact else "resampled, discretisation"
        return f"{self.angle:7.1f} deg  {self.output:10s}  {self.error:9.2e}  ({kind})"


def format_rows(rows: Sequence[EquivarianceRow]) -> str:
    """The rows of :func:`check_equivariance` as a table with a header."""
    header = f"{'angle':>11s}  {'output':10s}  {'rel. error':>9s}"
    return "\n".join([header, *map(str, rows)])


def _turn_maps(y: torch.Tensor, angle: float, quarter: int | None) -> torch.Tensor:
    """Rotate real maps ``(..., H, W)`` (any leading dimensions) by ``angle`` radians."""
    if quarter is not None:
        return torch.rot90(y, quarter, dims=(-2, -1))
    flat = y.reshape(-1, 1, *y.shape[-2:])
    return rotate_images(flat, angle).reshape(y.shape)


def _turn_input(x: torch.Tensor, angle: float, quarter: int | None) -> torch.Tensor:
    if x.dim() == 6:
        return rot90_harmonic(x, quarter) if quarter is not None else rotate_harmonic(x, angle)
    return _turn_maps(x, angle, quarter)


def _mask_for(y: torch.Tensor, quarter: int | None) -> torch.Tensor | None:
    """The inscribed disc of ``y``'s maps for resampled angles (``None`` for quarter turns)."""
    if quarter is not None:
        return None
    h, w = y.shape[-2:]
    if h != w:
        raise ValueError(
            f"check_equivariance: angles other than quarter turns need square outputs; got {h}x{w}"
        )
    return disc_mask(h, device=y.device)


def check_equivariance(
    module: nn.Module,
    inputs: torch.Tensor,
    angles: Sequence[float] = (90, 180, 270, 15, 30, 45),
) -> list[EquivarianceRow]:
    r"""How far ``module`` is from rotation equivariance on ``inputs``, per angle.

    ``inputs`` are images ``(B, C, H, W)`` or harmonic maps ``(B, C, M, 2, H, W)``; each
    is turned counter-clockwise by each angle (degrees) and the module's output on it,
    :math:`f(R x)`, is compared with the output turned the same way, :math:`R f(x)`:

    * logits ``(B, K)``: invariance, :math:`\|f(Rx) - f(x)\| / \|f(x)\|`;
    * per-pixel maps ``(B, K, H', W')``: the maps turn with the input;
    * harmonic maps ``(B, C, M, 2, H', W')``: two rows, their magnitudes (maps that turn,
      values invariant) and the maps themselves, turned and multiplied by
      :math:`e^{im\theta}` per order :math:`m`.

    Quarter turns rotate the pixel grid exactly (``torch.rot90``, :func:`rot90_harmonic`),
    so an equivariant model's error there is float round-off (~1e-7 in float32). Other
    angles resample inputs and outputs bilinearly (:func:`rotate_images`,
    :func:`rotate_harmonic`) and are compared inside the inscribed disc: the error is
    then the discretisation of filters and images, bounded but not small (see
    ``docs/guide/layers.md`` for measured figures). The module runs in eval mode without
    gradients, and its mode is restored.

    Returns:
        one :class:`EquivarianceRow` per angle (two for harmonic outputs); print them,
        or :func:`format_rows` for a table.
    """
    if inputs.dim() not in (4, 6):
        raise ValueError(
            "check_equivariance: inputs must be images (B, C, H, W) or harmonic maps "
            f"(B, C, M, 2, H, W); got {tuple(inputs.shape)}"
        )
    was_training = module.training
    module.eval()
    rows: list[EquivarianceRow] = []
    try:
        with torch.no_grad():
            y = module(inputs)
            for degrees in angles:
                quarter = round(degrees / 90) % 4 if float(degrees) % 90 == 0 else None
                angle = math.radians(degrees)
                turned = module(_turn_input(inputs, angle, quarter))
                rows += _compare(y, turned, float(degrees), angle, quarter)
    finally:
        module.train(was_training)
    return rows


def _compare(
    y: torch.Tensor, turned: torch.Tensor, degrees: float, angle: float, quarter: int | None
) -> list[EquivarianceRow]:
    exact = quarter is not None
    if y.dim() == 2:
        return [EquivarianceRow(degrees, "logits", relative_error(turned, y), exact)]
    if y.dim() == 4:
        expected = _turn_input(y, angle, quarter)
        mask = _mask_for(y, quarter)
        return [
            EquivarianceRow(degrees, "per-pixel", relative_error(turned, expected, mask), exact)
        ]
    if y.dim() == 6:
        mask = _mask_for(y, quarter)
        mag, mag_turned = magnitude(y), magnitude(turned)
        expected = _turn_input(y, angle, quarter)
        return [
            EquivarianceRow(
                degrees,
                "magnitudes",
                relative_error(mag_turned, _turn_maps(mag, angle, quarter), mask),
                exact,
            ),
            EquivarianceRow(degrees, "harmonic", relative_error(turned, expected, mask), exact),
        ]
    raise ValueError(
        "check_equivariance: the module's output must be logits (B, K), per-pixel maps "
        f"(B, K, H, W) or harmonic maps (B, C, M, 2, H, W); got {tuple(y.shape)}"
    )
