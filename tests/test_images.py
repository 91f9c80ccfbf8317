"""Reading users' digit images: every mode, hostile files, MNIST-style preprocessing."""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageDraw

from hnets.errors import HNetsError
from hnets.images import (
    image_info,
    load_garment,
    load_image,
    load_image_as,
    preprocess_digit,
    preprocess_garment,
    read_grayscale,
)

from .conftest import MNIST_SOURCE


def digit(height: int = 90, width: int = 60) -> np.ndarray:
    """A white "7" on black, uint8, away from the border."""
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    draw.line([(12, 15), (48, 15), (24, 75)], fill=255, width=7)
    return np.asarray(img)


def save(array_or_image, path: Path, **kwargs) -> Path:
    img = (
        array_or_image
        if isinstance(array_or_image, Image.Image)
        else Image.fromarray(array_or_image)
    )
    img.save(path, **kwargs)
    return path


def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def check_mnist_like(x: torch.Tensor) -> None:
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    ink = x[0] > 0.1 * x.max()
    rows, cols = ink.any(1).nonzero(), ink.any(0).nonzero()
    extent = max(int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
    assert 18 <= extent <= 21  # the longer side fitted to 20 pixels
    grid = torch.arange(28, dtype=torch.float32)
    mass = x[0].sum()
    cy, cx = float((x[0].sum(1) * grid).sum() / mass), float((x[0].sum(0) * grid).sum() / mass)
    assert abs(cy - 14.0) <= 0.5 and abs(cx - 14.0) <= 0.5


@pytest.fixture
def reference(tmp_path) -> torch.Tensor:
    x = load_image(save(digit(), tmp_path / "ref.png"))
    check_mnist_like(x)
    return x


def test_white_on_black_and_black_on_white_agree(tmp_path, reference):
    inverted = load_image(save(255 - digit(), tmp_path / "paper.png"))
    assert similarity(inverted, reference) > 0.99
    # grey paper and grey ink: the background is stretched to black
    grey = (60 + digit().astype(np.float64) * 0.5).astype(np.uint8)
    assert similarity(load_image(save(255 - grey, tmp_path / "grey.png")), reference) > 0.98


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".pgm", ".jpg", ".gif", ".tif"])
def test_file_formats(tmp_path, reference, suffix):
    x = load_image(save(digit(), tmp_path / f"digit{suffix}"))
    check_mnist_like(x)
    assert similarity(x, reference) > 0.97


def _alpha_digit(mode: str) -> Image.Image:
    """A black 7 on a fully transparent background."""
    a = digit()
    rgba = np.zeros((*a.shape, 4), dtype=np.uint8)
    rgba[..., 3] = a  # opaque where the stroke is; the colour is black everywhere
    img = Image.fromarray(rgba, "RGBA")
    return img.convert(mode) if mode != "RGBA" else img


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(digit()).convert("1"),
        lambda: Image.fromarray(np.stack([digit()] * 3, axis=-1), "RGB"),
        lambda: Image.fromarray(np.stack([255 - digit()] * 3, axis=-1), "RGB"),
        lambda: Image.fromarray(digit()).convert("P"),
        lambda: Image.fromarray(np.stack([255 - digit()] * 3, -1), "RGB").convert("P", colors=8),
        lambda: _alpha_digit("RGBA"),
        lambda: _alpha_digit("LA"),
        lambda: Image.fromarray(digit()).convert("I"),
        lambda: Image.fromarray(digit()).convert("F"),
    ],
    ids=["1", "RGB", "RGB-paper", "P", "P-paper", "RGBA", "LA", "I", "F"],
)
def test_modes(tmp_path, reference, make):
    img = make()
    path = tmp_path / ("digit.tif" if img.mode in ("I", "F") else "digit.png")
    x = load_image(save(img, path))
    check_mnist_like(x)
    assert similarity(x, reference) > 0.95


def test_palette_with_transparency(tmp_path, reference):
    img = _alpha_digit("RGBA").convert("P")  # Pillow keeps transparency in a palette
    path = save(img, tmp_path / "pal.png")
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    assert similarity(load_image(path), reference) > 0.95


def test_sixteen_bit_uses_the_real_range(tmp_path, reference):
    # a 12-bit sensor stored in 16 bits: values 1000..1400 only
    values = (1000 + digit().astype(np.float64) * 400 / 255).astype(np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I;16")
    gray = read_grayscale(path)
    assert gray.min() == 0.0 and gray.max() == 1.0
    assert similarity(load_image(path), reference) > 0.99


def test_cmyk(tmp_path, reference):
    img = Image.fromarray(np.stack([255 - digit()] * 3, -1), "RGB").convert("CMYK")
    path = save(img, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    assert similarity(load_image(path), reference) > 0.95


def test_mnist_digits_come_back_as_they_were():
    """MNIST was made with this recipe: preprocessing an MNIST digit nearly reproduces it."""
    if not (MNIST_SOURCE / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("MNIST files not found")
    from hnets.data import read_idx

    images = read_idx(MNIST_SOURCE / "t10k-images-idx3-ubyte.gz")[:20].astype(np.float64) / 255
    scores = [similarity(preprocess_digit(im), torch.from_numpy(im).float()) for im in images]
    assert np.median(scores) > 0.99 and min(scores) > 0.8


def _png_declaring(tmp_path: Path, width: int, height: int) -> Path:
    """A small valid PNG whose IHDR is patched to declare ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("L", (4, 4), 255).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path = tmp_path / f"bomb-{width}x{height}.png"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("size", [(100_000, 100_000), (7_000, 7_000), (70_000, 1_000)])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, size):
    path = _png_declaring(tmp_path, *size)
    with pytest.raises(HNetsError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "too large" in message or "over the limit" in message


def test_the_pixel_cap_is_a_parameter(tmp_path):
    path = save(digit(), tmp_path / "d.png")
    with pytest.raises(HNetsError, match="over the limit"):
        load_image(path, max_pixels=1000)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("truncated", "cannot decode"),
        ("random", "not an image"),
        ("empty", "not an image"),
        ("text", "not an image"),
    ],
)
def test_broken_files_give_one_line_naming_the_file(tmp_path, content, message):
    png = (tmp_path / "ok.png").open("wb")
    Image.fromarray(digit(300, 300)).save(png, "PNG")
    png.close()
    good = (tmp_path / "ok.png").read_bytes()
    data = {
        "truncated": good[: len(good) // 2],
        "random": np.random.default_rng(0).bytes(5000),
        "empty": b"",
        "text": b"def main():\n    pass\n",
    }[content]
    path = tmp_path / f"{content}.png"
    path.write_bytes(data)
    with pytest.raises(HNetsError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_files_directories_and_blank_images(tmp_path):
    with pytest.raises(HNetsError, match="no such file"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(HNetsError, match="cannot decode|not an image"):
        load_image(tmp_path)
    for name, value in (("black", 0), ("white", 255), ("grey", 128)):
        path = save(np.full((30, 30), value, np.uint8), tmp_path / f"{name}.png")
        with pytest.raises(HNetsError, match="no digit") as info:
            load_image(path)
        assert str(path) in str(info.value)
    fully_transparent = np.zeros((30, 30, 4), np.uint8)
    with pytest.raises(HNetsError, match="no digit"):
        load_image(save(Image.fromarray(fully_transparent, "RGBA"), tmp_path / "clear.png"))


def test_tiny_and_extreme_aspect_images(tmp_path):
    line = np.zeros((5, 200), np.uint8)
    line[2, 10:190] = 255
    x = load_image(save(line, tmp_path / "line.png"))
    assert x.shape == (1, 28, 28) and float(x.max()) > 0.1
    dot = np.zeros((9, 9), np.uint8)
    dot[4, 4] = 255
    y = load_image(save(dot, tmp_path / "dot.png"))
    assert y.shape == (1, 28, 28) and 0 < float(y.max()) <= 1


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.integers(1, 40)),
        elements=st.floats(-0.5, 1.5) | st.sampled_from([np.nan, np.inf, -np.inf]),
    )
)
def test_preprocessing_any_array_gives_a_digit_or_a_clean_error(gray):
    try:
        x = preprocess_digit(gray)
    except HNetsError as exc:
        assert "\n" not in str(exc) and "no digit" in str(exc)
        return
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.max()) > 0.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 32), st.integers(1, 32), st.sampled_from([1, 3, 4]))),
)
def test_any_small_png_gives_a_digit_or_a_clean_error(pixels):
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    img = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    with tempfile.TemporaryDirectory() as tmp:
        path = save(img, Path(tmp) / "x.png")
        try:
            x = load_image(path)
        except HNetsError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            return
    assert x.shape == (1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


# --- load_image_as: any image as a fixed (C, S, S) array ----------------------------------


def test_load_image_as_sixteen_bit_uses_the_real_range(tmp_path):
    values = np.tile(np.linspace(1000, 1400, 16), (8, 1)).astype(np.uint16)  # 12-bit data
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I;16")
    info = image_info(path)
    assert (info.width, info.height, info.is_color) == (16, 8, False)
    gray = load_image_as(path, size=16, channels=1)
    assert gray.shape == (1, 16, 16) and gray.dtype == np.float32
    assert gray.min() < 0.05 and gray.max() > 0.95
    assert np.all(np.diff(gray[0, 8]) > 0)  # the ramp survives, left to right
    rgb = load_image_as(path, size=16, channels=3)
    assert rgb.shape == (3, 16, 16) and np.array_equal(rgb[0], rgb[2])
    np.testing.assert_allclose(rgb[1], gray[0], atol=1e-6)


def test_load_image_as_palette_images(tmp_path):
    pixels = np.zeros((12, 12, 3), np.uint8)
    pixels[:, 6:] = (200, 40, 0)  # red right half
    colour = save(Image.fromarray(pixels, "RGB").quantize(colors=4), tmp_path / "pal.png")
    assert Image.open(colour).mode == "P" and image_info(colour).is_color
    x = load_image_as(colour, size=6, channels=3)
    assert x.shape == (3, 6, 6)
    red = np.broadcast_to(np.array([200, 40, 0])[:, None, None] / 255, (3, 6, 2))
    np.testing.assert_allclose(x[:, :, 4:], red, atol=0.01)
    assert x[:, :, :2].max() < 0.01
    gray = save(Image.fromarray(pixels[..., 0]).convert("P"), tmp_path / "graypal.png")
    assert Image.open(gray).mode == "P" and not image_info(gray).is_color
    y = load_image_as(gray, size=6, channels=1)
    assert y.shape == (1, 6, 6) and abs(float(y[0, 0, 5]) - 200 / 255) < 0.01


def test_load_image_as_squashes_and_composites_alpha_onto_black(tmp_path):
    rgba = np.zeros((20, 40, 4), np.uint8)  # 40 wide, 20 high
    rgba[..., :3] = 255
    rgba[:, :20, 3] = 255  # the left half opaque white, the right half transparent white
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "half.png")
    x = load_image_as(path, size=8, channels=1)
    assert x.shape == (1, 8, 8)  # squashed to a square, not cropped
    assert np.allclose(x[0, :, :3], 1.0) and np.allclose(x[0, :, 5:], 0.0)
    assert image_info(path).is_color


def test_load_image_as_keeps_pixels_as_stored_and_names_bad_files(tmp_path):
    img = Image.fromarray(np.tri(10, 10, dtype=np.uint8) * 255)
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees
    path = save(img, tmp_path / "exif.jpg", exif=exif, quality=100)
    x = load_image_as(path, size=10, channels=1)
    assert x[0, 9, 0] > 0.9 and x[0, 0, 9] < 0.1  # the tag is not applied
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    for call in (lambda: load_image_as(broken, size=8, channels=3), lambda: image_info(broken)):
        with pytest.raises(HNetsError, match="not an image") as info:
            call()
        assert str(broken) in str(info.value)
    with pytest.raises(HNetsError, match="over the limit"):
        load_image_as(path, size=8, channels=1, max_pixels=50)


# --- preprocess_garment: Fashion-MNIST's recipe --------------------------------------------


def garment(height: int = 100, width: int = 160, top: int = 10, left: int = 90) -> np.ndarray:
    """A dark 40 x 60 (h x w) "bag" on white, away from the centre, float64 in [0, 1]."""
    g = np.ones((height, width))
    g[top : top + 40, left : left + 60] = 0.2
    return g


def _extent(x: torch.Tensor) -> tuple[int, int, int, int]:
    ink = x[0] > 0.1
    rows, cols = ink.any(1).nonzero().flatten(), ink.any(0).nonzero().flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def test_preprocess_garment_fits_the_longer_side_and_centres_geometrically():
    x = preprocess_garment(garment())
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) == pytest.approx(1.0)
    top, bottom, left, right = _extent(x)
    assert (left, right) == (0, 27)  # the longer side fills the field
    assert bottom - top + 1 in (18, 19) and abs((top + bottom) / 2 - 13.5) <= 0.5


def test_preprocess_garment_inverts_dark_on_white_only():
    dark_on_white = preprocess_garment(garment())
    light_on_black = preprocess_garment(1.0 - garment())
    assert similarity(dark_on_white, light_on_black) > 0.999
    assert float(dark_on_white[0, 14, 14]) > 0.9 and float(dark_on_white[0, 0, 0]) == 0.0


def test_preprocess_garment_centres_by_geometry_not_mass():
    """A garment heavier at the bottom stays where its box says, unlike a digit."""
    g = np.zeros((60, 60))
    g[20:40, 10:50] = 0.3  # 20 high, 40 wide
    g[35:40, 10:50] = 1.0  # heavy bottom edge
    x = preprocess_garment(g)
    assert _extent(x) == (7, 20, 0, 27)  # 14 rows centred in 28: 7 above, 7 below
    top, bottom, _, _ = _extent(preprocess_digit(g))
    assert (top + bottom) / 2 < 13  # the digit recipe lifts it to centre the mass


def test_blank_garments_and_load_garment(tmp_path):
    for value in (0.0, 0.5, 1.0):
        with pytest.raises(HNetsError, match="no garment found"):
            preprocess_garment(np.full((30, 30), value))
    path = save((garment() * 255).astype(np.uint8), tmp_path / "bag.png")
    assert similarity(load_garment(path), preprocess_garment(garment())) > 0.99
    blank = save(np.full((30, 30), 255, np.uint8), tmp_path / "blank.png")
    with pytest.raises(HNetsError, match="no garment") as info:
        load_garment(blank)
    assert str(blank) in str(info.value) and "\n" not in str(info.value)
