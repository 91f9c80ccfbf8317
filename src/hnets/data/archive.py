"""Downloading an archive with a checksum, and extracting a zip file safely.

A download streams into a temporary file next to its destination while the md5
is computed; only a complete transfer with the expected checksum is renamed to the
destination, so a partial or corrupt file never becomes the cache.

Extraction refuses the whole archive, before writing anything, when a member has
an absolute path, a ``..`` component, is a link or a special file, or when the
declared sizes add up to more than a cap; while extracting it also counts the
bytes actually produced, so an archive that lies about its sizes stops at the cap.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import stat
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm

from .._io import atomic_write, file_digest
from ..errors import DataError

__all__ = ["DEFAULT_MAX_UNPACKED_BYTES", "file_md5", "download", "safe_extract", "zip_names"]

#: Default cap on the total size unpacked from an archive (the real Rot-MNIST
#: .amat files take about 0.8 GB).
DEFAULT_MAX_UNPACKED_BYTES = 4 << 30
_MAX_MEMBERS = 1000
_CHUNK = 1 << 20
_TIMEOUT_S = 60


def file_md5(path: str | os.PathLike[str]) -> str:
    """The md5 hex digest of a file."""
    return file_digest(path, "md5")


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None,
    progress: bool = True,
    hint: str = "",
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking its length and md5.

    An existing ``dest`` whose md5 matches is reused without downloading.

    Args:
        url: http(s) or file URL.
        dest: destination file; its directory is created.
        md5: expected md5 hex digest, or ``None`` to skip the check.
        progress: show a tqdm progress bar.
        hint: appended to network error messages (what to do offline).

    Raises:
        DataError: the server cannot be reached, the transfer is truncated, or the
            checksum differs; ``dest`` is then left as it was.
    """
    dest = Path(dest)
    if md5 is not None and dest.is_file() and file_md5(dest) == md5.lower():
        return dest
    try:
        response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # noqa: S310 - user's URL
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise DataError(f"cannot download {url} ({_reason(exc)}).{hint}") from None
    with response:
        total = _content_length(response)
        with atomic_write(dest, "wb") as fh:
            got, digest = _stream(response, fh, url, total, progress, hint)
            if total is not None and got != total:
                raise DataError(f"download of {url} truncated: got {got} of {total} bytes.{hint}")
            if md5 is not None and digest != md5.lower():
                raise DataError(f"checksum mismatch for {url}: md5 {digest}, expected {md5}")
    return dest


def zip_names(archive: str | os.PathLike[str]) -> list[str]:
    """Member names of a zip archive; a file that is not a zip raises :class:`DataError`."""
    with _open_zip(Path(archive)) as zf:
        return zf.namelist()


def safe_extract(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
) -> list[Path]:
    """Extract a zip archive into ``dest``, refusing anything unsafe.

    Args:
        archive: the zip file.
        dest: directory to extract into (created).
        max_bytes: cap on the total unpacked size.

    Returns:
        The extracted regular files.

    Raises:
        DataError: the archive is corrupt or unsafe (absolute path, ``..``, link,
            special file, too many members, larger than ``max_bytes`` unpacked).
    """
    archive, dest = Path(archive), Path(dest)
    with _open_zip(archive) as zf:
        infos = zf.infolist()
        _check_members(infos, archive, max_bytes)
        dest.mkdir(parents=True, exist_ok=True)
        budget = [max_bytes]
        files = []
        for info in infos:
            target = dest.joinpath(*_member_parts(info.filename))
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _extract_member(zf, info, target, archive, budget)
            files.append(target)
    return files


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except FileNotFoundError:
        raise DataError(f"{archive}: file not found") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{archive}: not a valid zip archive ({exc})") from None


def _check_members(infos: list[zipfile.ZipInfo], archive: Path, max_bytes: int) -> None:
    if len(infos) > _MAX_MEMBERS:
        raise DataError(f"{archive}: {len(infos)} members, more than the limit of {_MAX_MEMBERS}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for info in infos:
        problem = _member_problem(info)
        if problem:
            raise DataError(f"{archive}: refusing member {info.filename!r}: {problem}")
        parts = _member_parts(info.filename)
        if parts in seen:
            raise DataError(f"{archive}: member {info.filename!r} appears twice")
        seen.add(parts)
        total += info.file_size
    if total > max_bytes:
        raise DataError(
            f"{archive}: unpacks to {total} bytes, more than the limit of {max_bytes} (zip bomb?)"
        )


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if not name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path goes outside the archive ('..')"
    if "\x00" in name:
        return "NUL in the name"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special file"
    if not _member_parts(info.filename) and not info.is_dir():
        return "empty name"
    return None


def _member_parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "."))


def _extract_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, archive: Path, budget: list[int]
) -> None:
    written = 0
    try:
        with zf.open(info) as src, open(target, "xb") as out:
            for block in iter(lambda: src.read(_CHUNK), b""):
                written += len(block)
                budget[0] -= len(block)
                if written > info.file_size or budget[0] < 0:
                    raise DataError(
                        f"{archive}: {info.filename!r} unpacks beyond its declared size"
                    )
                out.write(block)
    except FileExistsError:
        raise DataError(f"{archive}: member {info.filename!r} clashes with another") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise DataError(f"{archive}: corrupt member {info.filename!r} ({exc})") from None


def _stream(
    response: IO[bytes], fh: IO[bytes], url: str, total: int | None, progress: bool, hint: str
) -> tuple[int, str]:
    """Copy the response body to ``fh``; return the byte count and md5 hex digest."""
    digest = hashlib.md5()
    got = 0
    name = url.rsplit("/", 1)[-1] or url
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress)
    with bar:
        while True:
            try:
                block = response.read(_CHUNK)
            except (OSError, ValueError, EOFError, http.client.HTTPException) as exc:
                raise DataError(
                    f"download of {url} failed after {got} bytes ({exc}).{hint}"
                ) from None
            if not block:
                break
            fh.write(block)
            digest.update(block)
            got += len(block)
            bar.update(len(block))
    return got, digest.hexdigest()


def _content_length(response: object) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
