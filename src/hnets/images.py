"""Reading a user's digit image and turning it into an MNIST-style ``(1, 28, 28)`` tensor.

:func:`load_image` reads any image Pillow understands (PNG, JPEG, PGM, BMP...;
modes 1, L, LA, RGB, RGBA, P, CMYK, 16-bit I;16 / I, F) and hands the grayscale
array to :func:`preprocess_digit`, which follows the recipe MNIST itself was made
with (LeCun et al.): the digit is cropped, fitted into a 20 x 20 box with its
aspect ratio kept, and placed in a 28 x 28 field so that its centre of mass sits
at the centre.

Files are treated as untrusted: the pixel count is checked against a cap *before*
decoding (decompression bombs), and every decoding failure becomes an
:class:`hnets.errors.HNetsError` naming the file, never a traceback.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import HNetsError

__all__ = ["MAX_PIXELS", "load_image", "read_grayscale", "preprocess_digit"]

#: Largest image (width x height) :func:`load_image` decodes: 40 Mpixel.
MAX_PIXELS = 40_000_000
_CANVAS = 28  # MNIST field
_BOX = 20  # MNIST digits are fitted into a 20 x 20 box
_INK = 0.1  # ink: pixels brighter than this fraction of the brightest one
_MIN_CONTRAST = 0.02  # below this the image counts as blank
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def load_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Read an image file and preprocess it like MNIST (see :func:`preprocess_digit`).

    Args:
        path: an image file of any size in any format and mode Pillow reads.
        max_pixels: refuse images with more pixels than this, before decoding.

    Returns:
        float32 ``(1, 28, 28)`` in ``[0, 1]``: a light digit on a black background.

    Raises:
        HNetsError: a missing, truncated or non-image file, an image over the
            pixel cap, or one with no digit in it; the message names the file.
    """
    gray = read_grayscale(path, max_pixels=max_pixels)
    try:
        return preprocess_digit(gray)
    except HNetsError as exc:
        raise HNetsError(f"{path}: {exc}") from None


def read_grayscale(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image into a float64 ``(H, W)`` grayscale array in ``[0, 1]``.

    * 8-bit modes (1, L, RGB, CMYK, P...) are converted to luminance
      (ITU-R 601 weights) and divided by 255;
    * 16-bit and 32-bit modes (I;16, I, F) are stretched over their actual
      range (min to max), since such files rarely use the whole range;
    * images with an alpha channel (LA, RGBA, P with transparency) are
      composited over a background that contrasts with the opaque pixels:
      white behind dark strokes, black behind light ones;
    * an EXIF orientation tag is applied (photos from phones).

    Raises:
        HNetsError: see :func:`load_image`.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise HNetsError(
                        f"{path}: the image declares {width}x{height} pixels, over the limit of "
                        f"{max_pixels / 1e6:g} Mpixel; refusing to decode it"
                    )
                img.load()
                return _to_gray(ImageOps.exif_transpose(img))
    except HNetsError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HNetsError(
            f"{path}: the image declares a size too large to decode safely (decompression bomb)"
        ) from None
    except FileNotFoundError:
        raise HNetsError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise HNetsError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise HNetsError(f"{path}: cannot decode the image ({reason})") from None


def preprocess_digit(gray: np.ndarray) -> torch.Tensor:
    """Turn a grayscale digit image into an MNIST-style ``(1, 28, 28)`` tensor.

    Steps:

    1. values are clipped to ``[0, 1]`` (NaN counts as 0);
    2. if the border (the outer eighth on each side) is brighter on average than
       the centre (the middle half), the digit is dark on light paper: invert;
    3. the background level (median of the border) becomes 0 and the brightest
       pixel 1, so grey paper turns black;
    4. crop to the bounding box of the ink: pixels above ``0.1`` times the maximum;
    5. resize the box so that its longer side is 20 pixels, aspect ratio kept
       (bilinear with antialiasing);
    6. paste it into a black 28 x 28 canvas so that its centre of mass lands on
       pixel (14, 14), where MNIST's digits have theirs (mean over the test set:
       13.99, 14.01), shifted by whole pixels and back inside the canvas if the
       digit would stick out.

    Args:
        gray: ``(H, W)`` array, values meant to lie in ``[0, 1]``.

    Returns:
        float32 ``(1, 28, 28)`` in ``[0, 1]``.

    Raises:
        HNetsError: the array is not 2-D or empty, or the image is blank (no ink).
    """
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 2 or g.size == 0:
        raise HNetsError(f"expected a non-empty 2-D grayscale image, got shape {g.shape}")
    g = np.clip(np.nan_to_num(g, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if _border(g).mean() > _centre(g).mean():
        g = 1.0 - g
    background = float(np.median(_border(g)))
    peak = float(g.max())
    if peak - background < _MIN_CONTRAST:
        raise HNetsError("no digit found: the image is blank (no ink against the background)")
    g = np.clip((g - background) / (peak - background), 0.0, 1.0)
    rows = np.flatnonzero((g > _INK).any(axis=1))
    cols = np.flatnonzero((g > _INK).any(axis=0))
    crop = g[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    digit = _fit_box(torch.from_numpy(crop).float())
    return _centre_by_mass(digit).unsqueeze(0)


def _to_gray(img: Image.Image) -> np.ndarray:
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        low, high = float(values.min()), float(values.max())
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    if img.mode in _ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
        return _composite(_luminance(rgba[..., :3]), rgba[..., 3])
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    return _luminance(np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``gray`` over a background that contrasts with what is opaque."""
    weight = float(alpha.sum())
    if weight <= 0.0:
        return np.zeros_like(gray)  # fully transparent: blank
    foreground = float((gray * alpha).sum()) / weight
    background = 1.0 if foreground < 0.5 else 0.0
    return gray * alpha + background * (1.0 - alpha)


def _border(g: np.ndarray) -> np.ndarray:
    b = max(1, min(g.shape) // 8)
    return np.concatenate([g[:b].ravel(), g[-b:].ravel(), g[:, :b].ravel(), g[:, -b:].ravel()])


def _centre(g: np.ndarray) -> np.ndarray:
    h, w = g.shape
    return g[h // 4 : h - h // 4, w // 4 : w - w // 4]


def _fit_box(crop: torch.Tensor) -> torch.Tensor:
    """Resize so that the longer side is ``_BOX`` pixels, aspect ratio kept."""
    h, w = crop.shape
    scale = _BOX / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = F.interpolate(
        crop[None, None], size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0, 0].clamp(0.0, 1.0)


def _centre_by_mass(digit: torch.Tensor) -> torch.Tensor:
    h, w = digit.shape
    mass = digit.sum()
    if mass <= 0:
        raise HNetsError("no digit found: nothing left after resizing")
    cy = float((digit.sum(dim=1) * torch.arange(h, dtype=digit.dtype)).sum() / mass)
    cx = float((digit.sum(dim=0) * torch.arange(w, dtype=digit.dtype)).sum() / mass)
    centre = _CANVAS / 2.0  # MNIST's convention: mass centred on pixel 14, not on 13.5
    top = min(max(round(centre - cy), 0), _CANVAS - h)
    left = min(max(round(centre - cx), 0), _CANVAS - w)
    canvas = torch.zeros(_CANVAS, _CANVAS, dtype=torch.float32)
    canvas[top : top + h, left : left + w] = digit
    return canvas
