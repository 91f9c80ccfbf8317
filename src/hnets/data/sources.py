"""A dataset named on the command line, as a type with its behaviour.

:func:`data_source` turns a ``--dataset`` name into a :class:`DataSource`: a
:class:`RegisteredSource` (``rotmnist``, ``rotfashion``: :mod:`hnets.data.registry`)
or a :class:`FolderSource` (``folder:PATH``: :mod:`hnets.data.folder`). Callers ask
it to check a request, to locate (and, offline, prepare) a prepared directory, to
load a split, or to say what it knows about its classes, instead of branching on
the name. Each kind accepts its own preparation options
(:attr:`DataSource.option_names`: a folder's ``image_size``, ``channels``,
``skip_bad``); the other kind refuses them in one line.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .cache import FOLDER_DATASET, is_prepared, resolve_data_dir
from .dataset import ImageDataset
from .registry import ROTMNIST_URL, DatasetSpec, folder_path, get_dataset, is_folder

__all__ = [
    "DataSource",
    "RegisteredSource",
    "FolderSource",
    "FOLDER_OPTIONS",
    "data_source",
    "missing_data_message",
]

#: The preparation options of a folder dataset (``None``/``False``: not asked for).
FOLDER_OPTIONS = ("image_size", "channels", "skip_bad")


def data_source(name: str) -> DataSource:
    """The dataset ``--dataset name`` names.

    Raises:
        DataError: an unknown name (listing the known ones), or ``folder:`` without a path.
    """
    if is_folder(name):
        return FolderSource(name, folder_path(name))
    return RegisteredSource(get_dataset(name))


class DataSource(ABC):
    """Where a dataset's images come from, and how they become a prepared directory."""

    #: the ``--dataset`` name
    name: str
    #: the preparation options this kind accepts
    option_names: tuple[str, ...] = ()

    @property
    @abstractmethod
    def manifest_dataset(self) -> str:
        """What a prepared directory's manifest calls this dataset."""

    @abstractmethod
    def check_variant(self, variant: str | None) -> None:
        """Raise :class:`DataError` for a variant this dataset does not have."""

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse preparation options that are not this kind's (one line naming them)."""
        given = [k for k, v in options.items() if v not in (None, False)]
        foreign = [k for k in given if k not in self.option_names]
        if foreign:
            raise DataError(f"{', '.join(foreign)}: only for --dataset folder:PATH")

    def locate(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        variant: str | None = None,
        *,
        progress: bool = True,
        **options: Any,
    ) -> Path:
        """The prepared directory, prepared first where that needs no network.

        Raises:
            DataError: a variant or option this kind does not have; no data, with a
                message saying how to get it.
        """
        self.check_options(options)
        self.check_variant(variant)
        return self._prepared(data_dir, variant, progress, options)

    @abstractmethod
    def _prepared(
        self,
        data_dir: str | os.PathLike[str] | None,
        variant: str | None,
        progress: bool,
        options: Mapping[str, Any],
    ) -> Path:
        """:meth:`locate` once the request is checked."""

    def load(
        self,
        split: str,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        variant: str | None = None,
        limit: int | None = None,
        progress: bool = True,
        **options: Any,
    ) -> ImageDataset:
        """One split, located (or prepared) as :meth:`locate` does."""
        vdir = self.locate(data_dir, variant, progress=progress, **options)
        return ImageDataset(vdir, split, limit=limit)

    @abstractmethod
    def known_classes(
        self, data_dir: str | os.PathLike[str] | None = None
    ) -> tuple[str, ...] | None:
        """The class names where they are known without decoding any image, else ``None``."""

    @abstractmethod
    def recorded_variant(self, extra: Mapping[str, Any]) -> str | None:
        """The variant a checkpoint's ``extra`` recorded for this dataset, if it has variants."""

    @abstractmethod
    def model_options(self, extra: Mapping[str, Any], channels: int) -> dict[str, Any]:
        """The preparation options that give the inputs of a model trained as ``extra`` says."""


@dataclass(frozen=True)
class RegisteredSource(DataSource):
    """A dataset of the registry: its variants are prepared in ``<data_dir>/<name>-<variant>``."""

    spec: DatasetSpec

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.spec.name

    @property
    def manifest_dataset(self) -> str:
        return self.spec.name

    def check_variant(self, variant: str | None) -> None:
        if variant is not None:
            self.spec.check_variant(variant)

    def _prepared(
        self,
        data_dir: str | os.PathLike[str] | None,
        variant: str | None,
        progress: bool,
        options: Mapping[str, Any],
    ) -> Path:
        """With ``variant=None`` the default variants are tried in order; missing data is
        built from the dataset's idx files when they are found locally (seed 0)."""
        spec = self.spec
        root = resolve_data_dir(data_dir)
        for candidate in (variant,) if variant else spec.default_variants:
            vdir = root / spec.dir_name(candidate)
            if is_prepared(vdir):
                return vdir
        from .idx import find_idx_dir
        from .protocol import prepare_from_idx, rotated_variant

        idx_dir = find_idx_dir(spec)
        if idx_dir is not None and variant in (None, rotated_variant(spec), spec.upright_variant):
            upright = variant is not None and variant == spec.upright_variant
            return prepare_from_idx(
                idx_dir, root, dataset=spec.name, upright=upright, progress=progress
            )
        raise DataError(missing_data_message(root, variant, dataset=spec.name))

    def known_classes(
        self, data_dir: str | os.PathLike[str] | None = None
    ) -> tuple[str, ...] | None:
        return self.spec.classes

    def recorded_variant(self, extra: Mapping[str, Any]) -> str | None:
        return extra.get("data_variant")

    def model_options(self, extra: Mapping[str, Any], channels: int) -> dict[str, Any]:
        return {}  # every variant has the one shape of the registry


@dataclass(frozen=True)
class FolderSource(DataSource):
    """``folder:PATH``: the user's images, prepared in ``<data_dir>/folder-<name>-<key>``."""

    name: str  # type: ignore[misc]
    path: str
    option_names = FOLDER_OPTIONS

    @property
    def manifest_dataset(self) -> str:
        return FOLDER_DATASET

    def check_variant(self, variant: str | None) -> None:
        if variant not in (None, "folder"):
            raise DataError(f"a folder dataset has no variant {variant!r}")

    def _prepared(
        self,
        data_dir: str | os.PathLike[str] | None,
        variant: str | None,
        progress: bool,
        options: Mapping[str, Any],
    ) -> Path:
        """Prepared, or found in the cache by its content and options
        (:func:`hnets.data.prepare_folder`)."""
        from .folder import prepare_folder

        return prepare_folder(self.path, data_dir, progress=progress, **options)

    def known_classes(
        self, data_dir: str | os.PathLike[str] | None = None
    ) -> tuple[str, ...] | None:
        """The folder names under ``train/``; ``None`` when ``data_dir`` is itself a
        prepared directory (what it holds is known once it is read)."""
        from .cache import MANIFEST_NAME
        from .folder import scan_folder

        if data_dir is not None and Path(data_dir, MANIFEST_NAME).is_file():
            return None
        return scan_folder(self.path).classes

    def recorded_variant(self, extra: Mapping[str, Any]) -> str | None:
        return None  # a folder has no variants

    def model_options(self, extra: Mapping[str, Any], channels: int) -> dict[str, Any]:
        """The model's image side and channels, and the ``skip_bad`` training used.

        The cache finds the copy training prepared by what it resolved to
        (:func:`hnets.data.prepare_folder`), so these are all a caller needs to give.
        """
        shape = extra.get("image_shape") or [channels, 28, 28]
        recipe = extra.get("train_config") or {}
        return {
            "image_size": int(shape[-1]),
            "channels": channels,
            "skip_bad": bool(recipe.get("skip_bad", False)),
        }


def missing_data_message(
    root: Path, variant: str | None = None, *, dataset: str = "rotmnist"
) -> str:
    """The one-line explanation of how to get data into ``root``."""
    spec = get_dataset(dataset)
    what = f"{spec.title} variant {variant!r}" if variant else f"{spec.title} data"
    flag = " --upright" if variant is not None and variant == spec.upright_variant else ""
    if spec.name == "rotmnist":
        if variant == "original":
            how = f"run `hnets data prepare` to download {ROTMNIST_URL} (or `--file ZIP`)"
        else:
            how = (
                f"run `hnets data prepare{flag} --from-mnist DIR` to build the stand-in from "
                "MNIST idx files (or set HNETS_MNIST_DIR=DIR), or `hnets data prepare` to "
                f"download {ROTMNIST_URL}"
            )
    else:
        assert spec.source is not None
        urls = spec.source.url or ""
        how = (
            f"run `hnets data prepare --dataset {spec.name}{flag}` (it downloads the idx files "
            f"from {urls}), or first {spec.source.install_hint}"
        )
    return f"no {what} in {root}: {how}; choose the location with --data-dir DIR or HNETS_DATA"
