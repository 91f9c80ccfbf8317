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
from hnets.images import load_image, preprocess_digit, read_grayscale

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
