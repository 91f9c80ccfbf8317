"""Fixtures for the data tests: isolated data directories, MNIST, archives, a local server.

Every test runs with ``HNETS_DATA`` pointing into its own temporary directory and
``HNETS_MNIST_DIR`` unset, so nothing touches ``~/.cache`` or the network.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hnets.data import prepare_from_mnist
from hnets.data.cache import SplitArrays, staging_dir, write_variant

MNIST_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"
AMAT_TRAIN_VALID = "mnist_all_rotation_normalized_float_train_valid.amat"
AMAT_TEST = "mnist_all_rotation_normalized_float_test.amat"


@pytest.fixture(autouse=True)
def _isolated_data_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HNETS_DATA", str(tmp_path / "default-data-dir"))
    monkeypatch.delenv("HNETS_MNIST_DIR", raising=False)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The original MNIST idx files; tests that need them skip when absent."""
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST files not found at {MNIST_DIR}")
    return MNIST_DIR.resolve()


@pytest.fixture(scope="session")
def standin_root(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with the full-size stand-in (seed 0), built once per session."""
    import time

    root = tmp_path_factory.mktemp("standin-data")
    start = time.perf_counter()
    prepare_from_mnist(mnist_dir, root, progress=False)
    (root / "build_seconds.txt").write_text(f"{time.perf_counter() - start:.3f}")
    return root


# --- synthetic data --------------------------------------------------------------------


def seven_glyph() -> np.ndarray:
    """An upright "7" (float32 28x28): a bar along the top, a stroke down to the left."""
    image = np.zeros((28, 28), dtype=np.float32)
    image[5:8, 7:22] = 1.0
    for row in range(8, 24):
        col = 21 - (row - 8) * 9 // 15
        image[row, col - 1 : col + 2] = 0.8
    return image


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random float32 28x28 images in [0, 1] and labels; image 0 is the "7"."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, 28, 28), dtype=np.float32)
    images[rng.random((n, 28, 28)) < 0.6] = 0.0
    labels = rng.integers(0, 10, size=n)
    images[0], labels[0] = seven_glyph(), 7
    return images, labels.astype(np.int64)


def amat_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The .amat text of upright ``images``: each row stored transposed, then the label."""
    lines = []
    for image, label in zip(images, labels, strict=True):
        values = " ".join(f"{v:.9g}" for v in image.T.reshape(-1))
        lines.append(f"{values} {float(label):.6e}\n")
    return "".join(lines).encode()


def npz_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """An npz with ``x`` (N, 784) float32 rows stored transposed, ``y`` int64."""
    buffer = io.BytesIO()
    x = np.ascontiguousarray(images.transpose(0, 2, 1).reshape(len(images), -1), np.float32)
    np.savez(buffer, x=x, y=labels.astype(np.int64))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


class SmallArchives:
    """Small archives in the two real formats, with the digits they hold."""

    def __init__(self) -> None:
        self.train_valid = synthetic_digits(24, seed=1)  # 20 train + 4 valid
        self.test = synthetic_digits(10, seed=2)
        self.npz_splits = {
            "train": synthetic_digits(15, seed=3),
            "valid": synthetic_digits(5, seed=4),
            "test": synthetic_digits(7, seed=5),
        }

    def amat_zip(self, prefix: str = "") -> bytes:
        return zip_bytes(
            {
                prefix + AMAT_TRAIN_VALID: amat_bytes(*self.train_valid),
                prefix + AMAT_TEST: amat_bytes(*self.test),
            }
        )

    def npz_zip(self) -> bytes:
        return zip_bytes(
            {
                f"rotated_{split}.npz": npz_bytes(*arrays)
                for split, arrays in self.npz_splits.items()
            }
        )


@pytest.fixture(scope="session")
def archives() -> SmallArchives:
    return SmallArchives()


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_synthetic_variant(
    root: Path, variant: str, sizes: tuple[int, int, int] = (50, 10, 30), seed: int = 0
) -> Path:
    """Publish a small variant through the real cache writer (no MNIST needed)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for k, (split, n) in enumerate(zip(("train", "valid", "test"), sizes, strict=True)):
        images, labels = synthetic_digits(n, seed=seed * 10 + k)
        angles = None if variant == "original" else rng.uniform(0, 6.28, n).astype(np.float32)
        splits[split] = SplitArrays(images, labels, angles)
    info = {"source": {"kind": "synthetic"}, "seed": seed}
    with staging_dir(root, variant) as staging:
        return write_variant(root, variant, splits, info, staging=staging)


# --- a local HTTP server ---------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        entry = self.server.routes.get(self.path)  # type: ignore[attr-defined]
        if entry is None:
            self.send_error(404)
            return
        body, mode = entry
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class LocalServer:
    """``serve(path, body, mode)`` then download ``url(path)``; mode "truncate" cuts it short."""

    def __init__(self, server: http.server.ThreadingHTTPServer) -> None:
        self._server = server
        self.requests = 0

    def serve(self, path: str, body: bytes, mode: str = "ok") -> str:
        self._server.routes[path] = (body, mode)  # type: ignore[attr-defined]
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.routes = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield LocalServer(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist_rotation_new.zip"


def digests(vdir: Path) -> dict[str, str]:
    """``split/field`` -> sha256 of every array file, from a variant's manifest."""
    from hnets.data.cache import read_manifest

    splits = read_manifest(vdir)["splits"]
    return {
        f"{split}/{field}": meta["sha256"]
        for split, entry in splits.items()
        for field, meta in entry["files"].items()
    }


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (relative), for "nothing left behind" checks."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The helpers above, for tests (importing from a conftest is fragile)."""
    return SimpleNamespace(
        seven_glyph=seven_glyph,
        synthetic_digits=synthetic_digits,
        amat_bytes=amat_bytes,
        npz_bytes=npz_bytes,
        zip_bytes=zip_bytes,
        md5_of=md5_of,
        write_synthetic_variant=write_synthetic_variant,
        closed_port_url=closed_port_url,
        tree=tree,
        digests=digests,
        AMAT_TRAIN_VALID=AMAT_TRAIN_VALID,
        AMAT_TEST=AMAT_TEST,
    )
