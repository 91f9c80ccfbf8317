"""Shared fixtures: one prepared Rot-MNIST stand-in per session, helpers to run ``hnets``.

The stand-in is built once from the MNIST idx files in ``<repo>/../shared/data/mnist``
(tests needing it skip when they are absent); :func:`data_env` points ``HNETS_DATA``
at it for one test. Training tests use small slices of it (``limit_train``,
``limit_eval``) so that each run takes a second or two on two cores.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

MNIST_SOURCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
FASHION_SOURCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion-mnist"


@pytest.fixture(scope="session")
def rotmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding the stand-in variant (seed 0), built once per session."""
    if not (MNIST_SOURCE / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST files not found at {MNIST_SOURCE}")
    from hnets.data import prepare_from_mnist

    root = tmp_path_factory.mktemp("rotmnist")
    prepare_from_mnist(MNIST_SOURCE.resolve(), root, progress=False)
    return root


@pytest.fixture
def data_env(monkeypatch: pytest.MonkeyPatch, rotmnist_root: Path) -> Path:
    """``HNETS_DATA`` -> the session's stand-in; nothing is built from MNIST behind our back."""
    monkeypatch.setenv("HNETS_DATA", str(rotmnist_root))
    monkeypatch.delenv("HNETS_MNIST_DIR", raising=False)
    return rotmnist_root


@pytest.fixture
def one_thread():
    """Run torch on one thread for the test (restored afterwards).

    On a small shared machine two busy-waiting OpenMP threads competing with other
    processes run ~20 times slower than one; a fixed count also keeps results
    comparable with the subprocesses, which get ``OMP_NUM_THREADS=1``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_hnets(data_env: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m hnets ARGS...`` in a subprocess with the test's data directory."""

    def run(args: Sequence[str], *, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "hnets", *map(str, args)],
            env=subprocess_env(data_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    return run


def subprocess_env(data_root: Path) -> dict[str, str]:
    """The environment for a child ``hnets`` process: our data, no MNIST fallback, one thread."""
    env = {k: v for k, v in os.environ.items() if k != "HNETS_MNIST_DIR"}
    env["HNETS_DATA"] = str(data_root)
    env["OMP_NUM_THREADS"] = "1"  # see one_thread
    return env


class _Planted:
    """Unpickling this object would create the file ``marker``: evidence of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (open, (self.marker, "w"))


@pytest.fixture
def malicious_pickles(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A marker path and two hostile files: a raw pickle and a ``torch.save`` zip.

    Each would create the marker if anything unpickled it with arbitrary globals.
    """
    import io

    marker = tmp_path / "PWNED"
    buffer = io.BytesIO()
    torch.save({"format": "hnets-train/1", "payload": _Planted(marker)}, buffer)
    payloads = {"pickle": pickle.dumps(_Planted(marker)), "torch-zip": buffer.getvalue()}
    assert not marker.exists()
    return marker, payloads


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``hnets: error: ...`` line a bad input printed (asserted: one line, no traceback)."""
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("hnets: error: ") and "\n" not in err, err
    assert "Traceback" not in captured.err
    return err
