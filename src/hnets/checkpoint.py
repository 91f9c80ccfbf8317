"""Saving and loading models and training state, without ever unpickling untrusted code.

Two kinds of files, both written atomically (:func:`hnets._io.atomic_write`):

* a **model checkpoint** is a directory with ``model.safetensors`` (the
  ``state_dict``, plain tensors) and ``config.json`` (format tag
  :data:`MODEL_FORMAT`, the model's name and options, its parameter count, the
  library versions and free-form ``extra`` metadata such as test metrics). It is
  everything :func:`load_model` needs to rebuild the model on any device;
* a **training checkpoint** ``checkpoint.pt`` (:func:`save_training_state`) holds
  what ``hnets train --resume`` needs: model, optimizer and scheduler state, the
  epoch, the best metric, the RNG states and the run's configuration. It contains
  only tensors, dicts, lists, tuples, numbers, strings, booleans and ``None``, and
  is read back with ``torch.load(..., weights_only=True)`` only, which refuses to
  build any other object.

Every problem with a checkpoint (missing or truncated file, unknown format, weights
of another model) raises :class:`hnets.errors.CheckpointError` with a one-line
message naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from ._io import atomic_write, read_json, write_json
from .errors import CheckpointError, HNetsError
from .models import build_model, count_parameters, model_names, upgrade_state_dict

__all__ = [
    "MODEL_FORMAT",
    "TRAIN_FORMAT",
    "MODEL_FILE",
    "CONFIG_FILE",
    "save_model",
    "load_model",
    "read_model_config",
    "update_model_extra",
    "unwrap_model",
    "save_training_state",
    "load_training_state",
    "rng_state",
    "set_rng_state",
    "checkpoint_classes",
    "checkpoint_dataset",
]

MODEL_FORMAT = "hnets-model/1"
TRAIN_FORMAT = "hnets-train/1"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_PLAIN_SCALARS = (int, float, str, bool, type(None))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile``."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile wrapper
            model = model._orig_mod
        else:
            return model


def save_model(
    model: nn.Module, out_dir: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (created if needed).

    Args:
        model: a model from :func:`hnets.build_model` (it carries ``hnets_config``);
            a DDP or ``torch.compile`` wrapper is unwrapped.
        out_dir: the checkpoint directory.
        extra: JSON-serialisable metadata stored under ``"extra"`` in ``config.json``
            (test metrics, data variant, the training recipe...).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from ._version import __version__

    model = unwrap_model(model)
    spec = getattr(model, "hnets_config", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError("model has no hnets_config: build it with hnets.build_model(name, ...)")
    out_dir = Path(out_dir)
    # clone(): safetensors refuses tensors that share storage; contiguous CPU copies are safe.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    blob = safetensors.torch.save(tensors, metadata={"format": MODEL_FORMAT, "model": spec["name"]})
    with atomic_write(out_dir / MODEL_FILE, "wb") as fh:
        fh.write(blob)
    config = {
        "format": MODEL_FORMAT,
        "model": spec["name"],
        "options": dict(spec.get("options", {})),
        "parameters": count_parameters(model),
        "hnets_version": __version__,
        "torch_version": str(torch.__version__),
        "extra": dict(extra or {}),
    }
    write_json(out_dir / CONFIG_FILE, config)
    return out_dir


def read_model_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the ``config.json`` of a model checkpoint directory.

    Raises:
        CheckpointError: no such directory or file, not JSON, unknown format or model.
    """
    ckpt = _checkpoint_dir(path)
    config_path = ckpt / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{ckpt}: not an hnets model checkpoint (no {CONFIG_FILE})")
    try:
        config = read_json(config_path)
    except HNetsError as exc:
        raise CheckpointError(str(exc)) from None
    except UnicodeDecodeError:  # read_json reads text: a binary file fails before parsing
        raise CheckpointError(f"{config_path}: not a JSON text file") from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{config_path}: unknown format {found!r}, expected {MODEL_FORMAT!r}")
    name = config.get("model")
    if name not in model_names():
        raise CheckpointError(
            f"{config_path}: unknown model {name!r}; this hnets knows {', '.join(model_names())}"
        )
    if not isinstance(config.get("options", {}), dict):
        raise CheckpointError(f"{config_path}: 'options' must be a JSON object")
    if not isinstance(config.get("extra", {}), dict):
        raise CheckpointError(f"{config_path}: 'extra' must be a JSON object")
    return config


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    map_location: str | torch.device | None = None,
) -> nn.Module:
    """Rebuild a model from a checkpoint directory written by :func:`save_model`.

    The weights are loaded strictly (every tensor present with the right shape)
    and the model is returned in eval mode on ``device`` (default CPU). It carries
    ``hnets_config`` like a freshly built model, and ``hnets_checkpoint``: the
    whole ``config.json``.

    Args:
        path: the checkpoint directory (or its ``model.safetensors`` / ``config.json``),
            or the name of a pretrained model (:func:`hnets.hub.list_models`).
        device: where to put the model.
        map_location: the same as ``device``, for ``torch.load`` habits.

    Raises:
        CheckpointError: missing files, a corrupt or truncated weights file, an
            unknown format or model, or weights that belong to another model.
    """
    if (
        device is not None
        and map_location is not None
        and torch.device(device) != torch.device(map_location)
    ):
        raise ValueError(f"device={device!r} and map_location={map_location!r} disagree")
    target = torch.device(device if device is not None else map_location or "cpu")
    config = read_model_config(path)
    ckpt = _checkpoint_dir(path)
    try:
        model = build_model(config["model"], **config.get("options", {}))
    except ValueError as exc:
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: {exc}") from None
    tensors = upgrade_state_dict(model, _read_safetensors(ckpt / MODEL_FILE))
    problem = _mismatch(model.state_dict(), tensors)
    if problem:
        raise CheckpointError(
            f"{ckpt / MODEL_FILE}: the weights do not belong to model {config['model']!r} "
            f"with options {config.get('options', {})} ({problem})"
        )
    model.load_state_dict(tensors, strict=True)
    model.hnets_checkpoint = config
    return model.to(target).eval()


def checkpoint_dataset(config: Mapping[str, Any]) -> str:
    """The ``--dataset`` name a checkpoint was trained on (``rotmnist`` for older ones).

    ``config`` is a checkpoint's ``config.json`` (``model.hnets_checkpoint``).
    """
    return str(config.get("extra", {}).get("dataset") or "rotmnist")


def checkpoint_classes(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The class names a checkpoint predicts, in logit order (digits for older ones)."""
    extra = config.get("extra", {})
    classes = extra.get("classes")
    if classes:
        return tuple(str(c) for c in classes)
    from .data.registry import DATASETS, DIGITS  # only for checkpoints that name none

    spec = DATASETS.get(checkpoint_dataset(config))
    return spec.classes if spec is not None else DIGITS


def update_model_extra(out_dir: str | os.PathLike[str], extra: Mapping[str, Any]) -> None:
    """Merge ``extra`` into the ``"extra"`` entry of a checkpoint's ``config.json``."""
    config = read_model_config(out_dir)
    config["extra"] = {**config.get("extra", {}), **dict(extra)}
    write_json(_checkpoint_dir(out_dir) / CONFIG_FILE, config)


def save_training_state(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write a training checkpoint (``checkpoint.pt``) atomically.

    ``state`` may hold only tensors, dicts with string or integer keys, lists,
    tuples, numbers, strings, booleans and ``None`` (checked here), so that
    :func:`load_training_state` can read it with ``weights_only=True``. The format
    tag :data:`TRAIN_FORMAT` is added.
    """
    state = {**dict(state), "format": TRAIN_FORMAT}
    _check_plain(state, "state")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getbuffer())


def load_training_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)``, tensors on the CPU.

    Raises:
        CheckpointError: a missing, truncated or foreign file, or one that would
            need arbitrary objects unpickled (such files are refused, never run).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint there")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = found.group(1) if found else "objects other than tensors"
        raise CheckpointError(
            f"{path}: refused to load: it asks to unpickle {what}, and an hnets checkpoint "
            "holds only tensors and plain data"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any parse failure of an untrusted file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable hnets training checkpoint ({reason[:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: unknown format {found!r}, expected {TRAIN_FORMAT!r}")
    return state


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, numpy and Python RNG states as plain tensors, lists and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss": gauss},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states saved by :func:`rng_state` (CUDA states only where devices match)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def _checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    from .pretrained import SHA256, resolve_checkpoint

    path = resolve_checkpoint(path)  # a pretrained model's name -> its verified directory
    if path.is_file() and path.name in (MODEL_FILE, CONFIG_FILE):
        return path.parent
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such checkpoint directory, nor a pretrained model ({', '.join(SHA256)})"
        )
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    return path


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found (the checkpoint is incomplete)") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return safetensors.torch.load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure of an untrusted file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated weights file ({reason})") from None


def _mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """A short description of how ``found`` fails to fit ``expected`` ('' when it fits)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [
        f"{k} is {tuple(found[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"missing {_some(missing)}")
    if unexpected:
        parts.append(f"unexpected {_some(unexpected)}")
    if reshaped:
        parts.append(_some(reshaped))
    return "; ".join(parts)


def _some(items: list[str], shown: int = 2) -> str:
    head = ", ".join(items[:shown])
    return head if len(items) <= shown else f"{head} and {len(items) - shown} more"


def _check_plain(obj: Any, where: str) -> None:
    """Refuse anything ``torch.load(weights_only=True)`` would not read back.

    Exact types only: a ``str`` subclass such as ``torch.__version__`` would be
    pickled as its class and refused when loading.
    """
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN_SCALARS:
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where}: key {key!r} is not a string or an integer")
            _check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    else:
        raise TypeError(f"{where}: {type(obj).__name__} cannot go into a weights-only checkpoint")


def __getattr__(name: str) -> Any:
    # finding a checkpoint's data is hnets.data's job (hnets.data.model_data); the
    # name is kept here for code that imports it from this module
    if name == "load_checkpoint_data":
        from .data.model_data import load_checkpoint_data

        return load_checkpoint_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
