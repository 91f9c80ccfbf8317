"""Crash-safe file writing and safe reading helpers shared by the whole package.

Every file hnets writes goes through :func:`atomic_write`: the content is written
to a temporary file in the same directory, flushed and fsync'ed, then renamed over
the destination. A crash (even SIGKILL) leaves either the old file or the new one,
never a truncated file under the real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import HNetsError

__all__ = ["atomic_write", "write_json", "read_json", "append_line", "save_figure", "file_digest"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    Errors from the file system (read-only directory, full disk) are re-raised as
    :class:`HNetsError` naming the path.
    """
    path = Path(path)
    if "w" not in mode:
        raise ValueError("atomic_write only writes (mode must contain 'w')")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise HNetsError(f"cannot write {path}: {exc.strerror or exc}") from exc
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, mode) as fh:
            _chmod(fh.fileno(), tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise HNetsError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _chmod(fd: int, path: Path, mode: int) -> None:
    """``os.fchmod`` where it exists; ``os.chmod`` on the path elsewhere (Windows before
    Python 3.13, where it only sets or clears the read-only bit)."""
    fchmod = getattr(os, "fchmod", None)
    if fchmod is not None:
        fchmod(fd, mode)
    else:
        os.chmod(path, mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`HNetsError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HNetsError(f"{path}: not a JSON text file (bytes that are not UTF-8)") from None
    except FileNotFoundError:
        raise HNetsError(f"{path}: file not found") from None
    except OSError as exc:
        raise HNetsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HNetsError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line to a text file by rewriting it atomically.

    Metrics files are small (one line per epoch), so rewriting keeps the
    never-truncated guarantee without a journal.
    """
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    with atomic_write(path, "w") as fh:
        fh.write(old + line.rstrip("\n") + "\n")


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Render a matplotlib ``Figure`` to PNG (Agg, no display needed) and write it atomically."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getvalue())
    return Path(path)


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (``sha256``, ``md5``...), read 1 MiB at a time.

    Raises:
        HNetsError: the file cannot be read (the message names it).
    """
    digest = hashlib.new(algorithm)
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise HNetsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return digest.hexdigest()
