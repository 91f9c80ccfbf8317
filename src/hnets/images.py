"""Reading a user's digit image and turning it into an MNIST-style ``(1, 28, 28)`` tensor.

:func:`load_image` reads any image Pillow understands (PNG, JPEG, PGM, BMP...;
modes 1, L, LA, RGB, RGBA, P, CMYK, 16-bit I;16 / I, F) and hands the grayscale
array to :func:`preprocess_digit`, which follows the recipe MNIST itself was made
with (LeCun et al.): the digit is cropped, fitted into a 20 x 20 box with its
aspect ratio kept, and placed in a 28 x 28 field so that its centre of mass sits
at the centre.

:func:`load_garment` does the same with :func:`preprocess_garment`, the recipe
Fashion-MNIST was made with (Xiao, Rasul and Vollgraf 2017): the garment is cropped,
its longer side fitted to 28 pixels and the result centred in the 28 x 28 field.

:func:`load_image_as` turns any image into a fixed ``(C, S, S)`` array with no
cropping or centring: how a folder of the user's images becomes a dataset
(:mod:`hnets.data.folder`) and how ``hnets predict`` feeds a model trained on one.
:func:`image_info` reads what deciding the size and channels of such a dataset
needs (size, mode, colour or gray) without decoding the pixels.

Files are treated as untrusted: the pixel count is checked against a cap *before*
decoding (decompression bombs), and every decoding failure becomes an
:class:`hnets.errors.HNetsError` naming the file, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import HNetsError

__all__ = [
    "MAX_PIXELS",
    "ImageInfo",
    "image_info",
    "load_image",
    "load_garment",
    "load_image_as",
    "read_grayscale",
    "preprocess_digit",
    "preprocess_garment",
]

#: Largest image (width x height) :func:`load_image` decodes: 40 Mpixel.
MAX_PIXELS = 40_000_000
_CANVAS = 28  # MNIST field
_BOX = 20  # MNIST digits are fitted into a 20 x 20 box
_INK = 0.1  # ink: pixels brighter than this fraction of the brightest one
_MIN_CONTRAST = 0.02  # below this the image counts as blank
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_GRAY_MODES = ("1", "L", "LA", "La", *_SIXTEEN_BIT_MODES)
_PALETTE_MODES = ("P", "PA")


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


def load_garment(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Read an image file and preprocess it like Fashion-MNIST (see :func:`preprocess_garment`).

    Args:
        path: an image file of any size in any format and mode Pillow reads (a
            product photo: dark or coloured on white, or light on black).
        max_pixels: refuse images with more pixels than this, before decoding.

    Returns:
        float32 ``(1, 28, 28)`` in ``[0, 1]``: a light garment on a black background.

    Raises:
        HNetsError: as :func:`load_image`; a blank image says no garment was found.
    """
    gray = read_grayscale(path, max_pixels=max_pixels)
    try:
        return preprocess_garment(gray)
    except HNetsError as exc:
        raise HNetsError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class ImageInfo:
    """What an image file declares, read without decoding its pixels.

    Attributes:
        width, height: the size in pixels.
        mode: the Pillow mode (``L``, ``RGB``, ``I;16``, ``P``...).
        is_color: whether :func:`load_image_as` would need 3 channels to keep it:
            false for the gray modes (1, L, LA, I, I;16*, F) and for a palette image
            whose used palette entries are all gray, true for every other mode (an
            RGB file holding only gray pixels counts as colour).
    """

    width: int
    height: int
    mode: str
    is_color: bool


def image_info(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Read an image's size and mode from its header, and whether it is in colour.

    Only palette images (modes P and PA) are decoded, to see which palette entries
    they use.

    Raises:
        HNetsError: as :func:`load_image`, for files that cannot even be identified
            (a truncated file may pass here and fail when decoded).
    """
    with _open_image(path, max_pixels, load=False) as img:
        width, height = img.size
        if img.mode in _PALETTE_MODES:
            is_color = not _palette_is_gray(img)
        else:
            is_color = img.mode not in _GRAY_MODES
        return ImageInfo(int(width), int(height), img.mode, is_color)


def load_image_as(
    path: str | os.PathLike[str], *, size: int, channels: int, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode an image into a float32 ``(channels, size, size)`` array in ``[0, 1]``.

    The whole image is resized to ``size x size`` (Pillow's bilinear filter, which
    antialiases when shrinking): a non-square image is squashed, not cropped, and
    nothing is centred or inverted. Pixels are kept as stored: an EXIF orientation
    tag is *not* applied.

    * 8-bit modes are divided by 255; palette images (P) go through their palette;
      CMYK, YCbCr and the like are converted to RGB;
    * 16-bit and 32-bit modes (I;16, I, F) are stretched over their actual range,
      as :func:`read_grayscale` does;
    * an alpha channel (LA, RGBA, PA, P with transparency) is composited onto
      black: transparent pixels become 0, half-transparent ones are darkened;
    * ``channels=1``: colour becomes luminance (ITU-R 601 weights, as
      :func:`read_grayscale`); ``channels=3``: a gray image is repeated into three
      equal channels.

    Args:
        path: an image file in any format and mode Pillow reads.
        size: the side of the output, at least 1.
        channels: 1 (gray) or 3 (RGB).
        max_pixels: refuse images with more pixels than this, before decoding.

    Returns:
        float32 ``(channels, size, size)``, values in ``[0, 1]``.

    Raises:
        HNetsError: a missing, truncated or non-image file, or one over the pixel
            cap; the message names the file.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    with _open_image(path, max_pixels) as img:
        pixels = _to_planes(img, channels)
        return _resize_planes(pixels, size)


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
    with _open_image(path, max_pixels) as img:
        return _to_gray(ImageOps.exif_transpose(img))


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
    crop = _normalise_and_crop(
        gray, blank="no digit found: the image is blank (no ink against the background)"
    )
    digit = _fit_box(torch.from_numpy(crop).float(), _BOX)
    return _centre_by_mass(digit).unsqueeze(0)


def preprocess_garment(gray: np.ndarray) -> torch.Tensor:
    """Turn a grayscale product photo into a Fashion-MNIST-style ``(1, 28, 28)`` tensor.

    Follows how Fashion-MNIST was made from Zalando's product photos (Xiao, Rasul
    and Vollgraf 2017: trim, fit the longer edge to 28, centre, negate, gray):

    1. values are clipped to ``[0, 1]`` (NaN counts as 0);
    2. if the border (the outer eighth on each side) is brighter on average than
       the centre (the middle half), the photo is dark on white: invert, so the
       garment is light on black as in Fashion-MNIST;
    3. the background level (median of the border) becomes 0 and the brightest
       pixel 1;
    4. crop to the bounding box of the pixels above ``0.1`` times the maximum;
    5. resize the box so that its longer side is 28 pixels, aspect ratio kept
       (bilinear with antialiasing);
    6. paste it at the geometric centre of a black 28 x 28 canvas (not the centre
       of mass, unlike :func:`preprocess_digit`); an odd margin leaves the extra
       pixel below / on the right.

    Args:
        gray: ``(H, W)`` array, values meant to lie in ``[0, 1]``.

    Returns:
        float32 ``(1, 28, 28)`` in ``[0, 1]``.

    Raises:
        HNetsError: the array is not 2-D or empty, or the image is blank.
    """
    crop = _normalise_and_crop(
        gray, blank="no garment found: the image is blank (nothing against the background)"
    )
    garment = _fit_box(torch.from_numpy(crop).float(), _CANVAS)
    h, w = garment.shape
    top, left = (_CANVAS - h) // 2, (_CANVAS - w) // 2
    canvas = torch.zeros(_CANVAS, _CANVAS, dtype=torch.float32)
    canvas[top : top + h, left : left + w] = garment
    return canvas.unsqueeze(0)


@contextlib.contextmanager
def _open_image(
    path: str | os.PathLike[str], max_pixels: int, *, load: bool = True
) -> Iterator[Image.Image]:
    """Open an untrusted image file: pixel cap before decoding, every failure one line.

    Failures inside the ``with`` body (converting the decoded image) are turned
    into :class:`HNetsError` naming the file too.
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
                if load:
                    img.load()
                yield img
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


def _normalise_and_crop(gray: np.ndarray, *, blank: str) -> np.ndarray:
    """Steps 1-4 shared by the MNIST and Fashion-MNIST recipes: the cropped object."""
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 2 or g.size == 0:
        raise HNetsError(f"expected a non-empty 2-D grayscale image, got shape {g.shape}")
    g = np.clip(np.nan_to_num(g, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if _border(g).mean() > _centre(g).mean():
        g = 1.0 - g
    background = float(np.median(_border(g)))
    peak = float(g.max())
    if peak - background < _MIN_CONTRAST:
        raise HNetsError(blank)
    g = np.clip((g - background) / (peak - background), 0.0, 1.0)
    rows = np.flatnonzero((g > _INK).any(axis=1))
    cols = np.flatnonzero((g > _INK).any(axis=0))
    return g[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


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


def _to_planes(img: Image.Image, channels: int) -> np.ndarray:
    """A decoded image as float32 ``(channels, H, W)`` in ``[0, 1]``, alpha over black."""
    if img.mode in _PALETTE_MODES:
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in _SIXTEEN_BIT_MODES:
        planes = _to_gray(img)[None]
    elif img.mode in _ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
        planes = np.moveaxis(rgba[..., :3] * rgba[..., 3:], -1, 0)
    elif img.mode in ("1", "L"):
        planes = (np.asarray(img.convert("L"), dtype=np.float64) / 255.0)[None]
    else:
        planes = np.moveaxis(np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0, -1, 0)
    if channels == 1 and planes.shape[0] == 3:
        planes = _luminance(np.moveaxis(planes, 0, -1))[None]
    elif channels == 3 and planes.shape[0] == 1:
        planes = np.repeat(planes, 3, axis=0)
    return planes.astype(np.float32)


def _resize_planes(planes: np.ndarray, size: int) -> np.ndarray:
    """Resize each ``(H, W)`` plane to ``size x size`` with Pillow's bilinear filter."""
    out = [
        np.asarray(Image.fromarray(plane).resize((size, size), Image.Resampling.BILINEAR))
        for plane in np.ascontiguousarray(planes, dtype=np.float32)
    ]
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)


def _palette_is_gray(img: Image.Image) -> bool:
    """Whether every palette entry a P/PA image uses is gray (decodes the image)."""
    img.load()
    palette = img.getpalette("RGB") or []
    used = img.getcolors(256) if img.mode == "P" else img.getchannel(0).getcolors(256)
    for _, index in used or []:
        r, g, b = palette[3 * index : 3 * index + 3] or (0, 0, 0)
        if not r == g == b:
            return False
    return True


def _border(g: np.ndarray) -> np.ndarray:
    b = max(1, min(g.shape) // 8)
    return np.concatenate([g[:b].ravel(), g[-b:].ravel(), g[:, :b].ravel(), g[:, -b:].ravel()])


def _centre(g: np.ndarray) -> np.ndarray:
    h, w = g.shape
    return g[h // 4 : h - h // 4, w // 4 : w - w // 4]


def _fit_box(crop: torch.Tensor, box: int) -> torch.Tensor:
    """Resize so that the longer side is ``box`` pixels, aspect ratio kept."""
    h, w = crop.shape
    scale = box / max(h, w)
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
