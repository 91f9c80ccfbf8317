"""The idx, .amat and npz parsers: good files, each kind of bad file, and fuzzing.

Every malformed input must give a :class:`DataError` (one line, naming the file)
and nothing else; well-formed input must give arrays of the documented form.
"""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hnets.data import parse_amat, parse_idx, parse_npz, read_idx
from hnets.data.idx import read_mnist_images, read_mnist_labels
from hnets.errors import DataError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# --- idx ---------------------------------------------------------------------------------


def test_idx_round_trip_raw_and_gzipped(tmp_path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    (tmp_path / "raw").write_bytes(idx_bytes(images))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(idx_bytes(images)))
    assert np.array_equal(read_idx(tmp_path / "raw"), images)
    assert np.array_equal(read_mnist_images(tmp_path / "packed.gz"), images)


def test_idx_big_endian_types() -> None:
    values = np.array([[1, -2], [300, 70000]], dtype=np.int32)
    assert np.array_equal(parse_idx(idx_bytes(values, 0x0C)), values)
    floats = np.array([1.5, -2.25], dtype=np.float32)
    assert np.array_equal(parse_idx(idx_bytes(floats, 0x0D)), floats)


def test_idx_truncated_names_file_and_problem(tmp_path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated") as info:
        read_idx(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x00\x00\x08", "truncated idx file"),
        (b"\x12\x34\x08\x01" + b"\x00" * 8, "wrong magic number 0x12340801"),
        (b"\x00\x00\x07\x01" + b"\x00" * 8, "wrong magic number"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated idx header"),
        (idx_bytes(np.zeros(3, np.uint8)) + b"xx", "2 unexpected bytes"),
    ],
)
def test_idx_malformed(data: bytes, problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        parse_idx(data, "some-file")


def test_corrupt_gzip(tmp_path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8)))[:-12])
    with pytest.raises(DataError, match=r"x\.gz: corrupt gzip"):
        read_idx(path)


def test_label_outside_0_9(tmp_path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.array([3, 9, 12, 0], np.uint8)))
    with pytest.raises(DataError, match=r"labels: label 12 of sample 2 is not in 0-9"):
        read_mnist_labels(path)


def test_images_of_wrong_shape(tmp_path) -> None:
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(np.zeros((2, 27, 28), np.uint8)))
    with pytest.raises(DataError, match="28x28"):
        read_mnist_images(path)


@FUZZ
@given(st.binary(max_size=300))
def test_idx_fuzz_random_bytes(data: bytes) -> None:
    try:
        array = parse_idx(data, "fuzz")
    except DataError as exc:
        assert str(exc).startswith("fuzz: ")
    else:
        assert isinstance(array, np.ndarray) and array.ndim >= 1


@FUZZ
@given(st.data())
def test_idx_fuzz_mutated_valid_file(data: st.DataObject) -> None:
    shape = data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    good = idx_bytes(np.zeros(shape, np.uint8) + 7)
    mutated = _mutate(data, good)
    try:
        array = parse_idx(mutated, "fuzz")
    except DataError:
        return
    assert array.size * array.dtype.itemsize + 4 + 4 * array.ndim == len(mutated)


# --- amat --------------------------------------------------------------------------------


def test_amat_rows_are_transposed_back_to_upright(kit) -> None:
    seven = kit.seven_glyph()
    images, labels = parse_amat(kit.amat_bytes(seven[None], np.array([7])), "seven.amat")
    assert labels.tolist() == [7] and labels.dtype == np.int64
    assert images.dtype == np.float32 and images.shape == (1, 28, 28)
    assert np.allclose(images[0], seven, atol=1e-6)
    # The "7" reads upright: its longest horizontal run of ink is a bar in the top quarter.
    ink_per_row = (images[0] > 0.5).sum(axis=1)
    assert ink_per_row.argmax() < 7 and ink_per_row.max() >= 12
    # Reading the stored row without the transposition would put that bar on the left.
    naive = kit.amat_bytes(seven.T[None], np.array([7]))
    assert not np.allclose(parse_amat(naive)[0][0], seven)


def test_amat_known_layout() -> None:
    # Stored value k sits at (row k % 28, column k // 28) of the upright image.
    row = np.zeros(784)
    row[1] = 1.0  # second stored value: row 1, column 0
    text = " ".join(f"{v:g}" for v in row) + " 3\n"
    images, labels = parse_amat(text.encode())
    assert images[0, 1, 0] == 1.0 and images.sum() == 1.0 and labels.tolist() == [3]


def test_amat_skips_blank_lines_and_accepts_crlf(kit) -> None:
    images, labels = kit.synthetic_digits(3, seed=0)
    text = kit.amat_bytes(images, labels).replace(b"\n", b"\r\n\r\n")
    parsed, parsed_labels = parse_amat(text)
    assert np.allclose(parsed, images, atol=1e-6) and parsed_labels.tolist() == labels.tolist()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (" ".join(["0"] * 784) + "\n", "line 2 has 784 values, expected 785"),
        (" ".join(["0"] * 784) + " 11\n", "label 11.0 of sample 1 is not in 0-9"),
        (" ".join(["0"] * 784) + " 2.5\n", "label 2.5 of sample 1 is not in 0-9"),
        (" ".join(["0"] * 783) + " abc 1\n", "line 2: 'abc' is not a number"),
        (" ".join(["0"] * 783) + " 1.5 1\n", "pixel value 1.5 outside"),
        (" ".join(["0"] * 783) + " nan 1\n", "pixel value nan outside"),
    ],
)
def test_amat_malformed(line: str, problem: str) -> None:
    good = " ".join(["0.5"] * 784) + " 4\n"
    with pytest.raises(DataError, match=problem) as info:
        parse_amat((good + line).encode(), "x.amat")
    assert str(info.value).startswith("x.amat: ")


def test_amat_empty_and_binary() -> None:
    with pytest.raises(DataError, match="no images"):
        parse_amat(b"\n\n", "e.amat")
    with pytest.raises(DataError, match="not a number"):
        parse_amat(b"\xff\xfe" + b" 0" * 784 + b"\n", "b.amat")


@FUZZ
@given(st.binary(max_size=400))
def test_amat_fuzz_random_bytes(data: bytes) -> None:
    _check_parser_outcome(parse_amat, data)


@FUZZ
@given(st.data())
def test_amat_fuzz_mutated_valid_file(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 100)))
    images = rng.random((2, 28, 28)).astype(np.float32)
    good = b"".join(
        (" ".join(f"{v:.3f}" for v in image.T.reshape(-1)) + f" {k}\n").encode()
        for k, image in enumerate(images)
    )
    _check_parser_outcome(parse_amat, _mutate(data, good))


# --- npz ---------------------------------------------------------------------------------


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_npz_round_trip_is_upright(kit) -> None:
    images, labels = kit.synthetic_digits(4, seed=9)
    parsed, parsed_labels = parse_npz(kit.npz_bytes(images, labels), "r.npz")
    assert parsed.dtype == np.float32 and parsed.shape == (4, 28, 28)
    assert np.array_equal(parsed, images) and parsed_labels.tolist() == labels.tolist()


def test_npz_compressed_and_int32_labels() -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((2, 784), np.float32), y=np.array([1, 2], np.int32))
    images, labels = parse_npz(buffer.getvalue())
    assert images.shape == (2, 28, 28) and labels.dtype == np.int64 and labels.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"x": np.zeros((2, 784), np.float32)}, r"missing array 'y' \(has \['x'\]\)"),
        ({"images": np.zeros((2, 784)), "y": np.zeros(2, int)}, "missing array 'x'"),
        (
            {"x": np.zeros((2, 783), np.float32), "y": np.zeros(2, int)},
            r"x must be float \(N, 784\)",
        ),
        ({"x": np.zeros((2, 28, 28), np.float32), "y": np.zeros(2, int)}, "x must be float"),
        ({"x": np.zeros((2, 784), np.uint8), "y": np.zeros(2, int)}, "x must be float"),
        ({"x": np.zeros((2, 784), np.float32), "y": np.zeros(3, int)}, r"y must be \(2,\)"),
        ({"x": np.zeros((2, 784), np.float32), "y": np.array([1, 10])}, "y 10 of sample 1"),
        ({"x": np.full((1, 784), 2.0, np.float32), "y": np.array([1])}, "pixel value 2.0"),
        ({"x": np.zeros((0, 784), np.float32), "y": np.zeros(0, int)}, "no images"),
    ],
)
def test_npz_malformed(arrays: dict, problem: str) -> None:
    with pytest.raises(DataError, match=problem) as info:
        parse_npz(npz(**arrays), "rotated_train.npz")
    assert str(info.value).startswith("rotated_train.npz")


def test_npz_never_unpickles() -> None:
    objects = np.array([{"evil": 1}, None], dtype=object)
    with pytest.raises(DataError, match="never pickles"):
        parse_npz(npz(x=objects, y=np.zeros(2, int)), "pickled.npz")


def test_npz_not_a_zip() -> None:
    with pytest.raises(DataError, match="not an npz file"):
        parse_npz(b"hello", "h.npz")


@FUZZ
@given(st.binary(max_size=400))
def test_npz_fuzz_random_bytes(data: bytes) -> None:
    _check_parser_outcome(parse_npz, data)


@FUZZ
@given(st.data())
def test_npz_fuzz_mutated_valid_file(data: st.DataObject) -> None:
    good = npz(x=np.full((2, 784), 0.5, np.float32), y=np.array([1, 2]))
    _check_parser_outcome(parse_npz, _mutate(data, good))


# --- helpers -----------------------------------------------------------------------------


def _mutate(data: st.DataObject, good: bytes) -> bytes:
    """Flip, overwrite, cut or extend ``good`` at random places."""
    out = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["set", "cut", "extend", "insert"]))
        at = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "set" and out:
            out[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del out[at:]
        elif kind == "extend":
            out += data.draw(st.binary(min_size=1, max_size=20))
        else:
            out[at:at] = data.draw(st.binary(min_size=1, max_size=20))
    return bytes(out)


def _check_parser_outcome(parser, data: bytes) -> None:
    try:
        images, labels = parser(data, "fuzz")
    except DataError as exc:
        assert str(exc).startswith("fuzz") and "\n" not in str(exc)
        return
    assert images.dtype == np.float32 and images.shape == (len(labels), 28, 28)
    assert labels.dtype == np.int64 and ((labels >= 0) & (labels <= 9)).all()
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
