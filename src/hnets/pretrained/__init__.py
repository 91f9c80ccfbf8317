"""The shipped weights as files: where each registered model's files are, what they hash
to, and checkpoint arguments that name one.

Each ``hnets/pretrained/<name>/`` holds ``model.safetensors`` and the ``config.json``
that rebuilds the model. This module knows only the files (so that loading a checkpoint
by name needs nothing above it); the registry with the metadata, :func:`get_model` and
the rest is :mod:`hnets.hub`.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["SHA256", "files", "verify", "path", "resolve_checkpoint"]

MODEL_FILE = "model.safetensors"  # as hnets.checkpoint.MODEL_FILE
CONFIG_FILE = "config.json"

#: hex sha256 of each shipped ``model.safetensors``, checked before the weights are used;
#: the order is the registry's (:func:`hnets.list_models`).
SHA256: dict[str, str] = {
    "hnet-rotmnist": "2ee091ab8dddf164ef4d1eb74b049a6cb2cb8f48f2d6a41f8808eb7bbf521daa",
    "cnn-rotmnist": "d9ebfb8e7d3291e6a12f34fc376215a280d282347da2b3e0718cb39cd9846285",
    "hnet-rotfashion": "05ffdbb4006ee5c7b526d27ba5a8f9262187d0b3b22d12a73616b2fbe451e714",
    "cnn-rotfashion": "a71da59020801c62f7ca8f0adcb567a44ed3e75fd60ae2c0eff7723b18b7b672",
    "hnet-upright": "ac8fa47a906b0017fca9c70dcaad249500bfdd196d0cd144697fbe56e482f941",
    "cnn-upright": "18dd44d935220b07c30de7a94fd535dd27c65a221bee62548046bf976f959afb",
}


def files(name: str) -> Traversable:
    """The package-data directory of ``name``'s ``model.safetensors`` and ``config.json``."""
    return importlib.resources.files("hnets") / "pretrained" / name


def verify(name: str) -> None:
    """Check ``name``'s ``model.safetensors`` against its :data:`SHA256`.

    Raises:
        CheckpointError: the file is missing or its digest differs.
    """
    weights = files(name) / MODEL_FILE
    try:
        data = weights.read_bytes()
    except OSError as exc:
        raise CheckpointError(
            f"{weights}: the pretrained weights of {name} cannot be read "
            f"({exc.strerror or exc}); reinstall hnets"
        ) from None
    found = hashlib.sha256(data).hexdigest()
    if found != SHA256[name]:
        raise CheckpointError(
            f"{weights}: sha256 {found[:12]}... differs from the registered "
            f"{SHA256[name][:12]}... of {name}; the file is damaged, reinstall hnets"
        )


def path(name: str) -> Path:
    """The verified checkpoint directory of ``name``, as :func:`hnets.load_model` takes it.

    Raises:
        CheckpointError: the weights fail :func:`verify`, or hnets is installed in a
            form (a zip) whose package data are not files on disk.
    """
    found = files(name)
    if not isinstance(found, Path):
        raise CheckpointError(
            f"{name}: hnets' package data are not files on disk ({found}); "
            "install hnets as a regular package (pip install hnets)"
        )
    verify(name)
    return found


def resolve_checkpoint(given: str | os.PathLike[str]) -> Path:
    """A checkpoint argument as a path: an existing path as given, else a registered name.

    A registered name (``hnet-rotmnist``) becomes the verified package-data directory
    of its weights (:func:`path`); an existing file or directory of that name in the
    working directory is taken as given instead.
    """
    as_path = Path(given)
    if not as_path.exists() and str(given) in SHA256:
        return path(str(given))
    return as_path
