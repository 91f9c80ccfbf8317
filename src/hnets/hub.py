"""Pretrained models by name: the registry, the weights inside the package, their metadata.

hnets ships six trained models as package data (``hnets/pretrained/<name>/``: the
weights as ``model.safetensors`` and the ``config.json`` that rebuilds the
architecture), so an installed hnets needs neither a network nor a clone:

* ``hnet-rotmnist`` / ``cnn-rotmnist``: an H-Net and a CNN of the same size trained
  on the Rot-MNIST stand-in with rotation augmentation;
* ``hnet-rotfashion`` / ``cnn-rotfashion``: the same recipe on Rot-Fashion-MNIST;
* ``hnet-upright`` / ``cnn-upright``: trained on upright digits only, tested on
  rotated ones.

:func:`list_models` names them, :func:`get_model` builds one (with its weights when
``pretrained=True``), :func:`get_weights` returns its :class:`Weights`: the file's
sha256, its license, the command that retrains it, and :attr:`Weights.meta`, the
metadata as data. Every figure in ``meta`` (parameters, test accuracy and error,
image count, classes, input shape) is read from the shipped ``config.json``, never
written here; the sha256 is what the file is checked against before any use.

Everywhere a checkpoint directory is accepted (:func:`hnets.load_model`, every
``--checkpoint`` of the CLI) a registered name is accepted too; an existing path of
the same name wins (:func:`resolve_checkpoint`).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from . import pretrained
from .errors import CheckpointError
from .pretrained import resolve_checkpoint

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "Weights",
    "WEIGHTS",
    "list_models",
    "get_weights",
    "get_model",
    "resolve_checkpoint",
]

#: How ``hnets predict`` turns an image file into a model input, by the dataset's recipe.
_PREPROCESS_FUNCTIONS = {
    "digit": "hnets.images.load_image",
    "garment": "hnets.images.load_garment",
}


@dataclass(frozen=True)
class Weights:
    """One shipped model: where its files are, what they must hash to, how it was made.

    Attributes:
        name: the registered name (``hnet-rotmnist``...).
        command: the ``hnets train`` command line that retrains it (its settings are
            checked against the shipped ``config.json`` by the tests).
        summary: one line saying what the model is.
        license: SPDX identifier of the weights' license.
    """

    name: str
    command: str
    summary: str
    license: str = "MIT"

    @property
    def sha256(self) -> str:
        """Hex digest of ``model.safetensors``, checked before the weights are used
        (:data:`hnets.pretrained.SHA256`)."""
        return pretrained.SHA256[self.name]

    def files(self) -> Traversable:
        """The package-data directory holding ``model.safetensors`` and ``config.json``."""
        return pretrained.files(self.name)

    def verify(self) -> None:
        """Check ``model.safetensors`` against :attr:`sha256` (:func:`hnets.pretrained.verify`)."""
        pretrained.verify(self.name)

    def path(self) -> Path:
        """The verified checkpoint directory, as :func:`hnets.load_model` takes it
        (:func:`hnets.pretrained.path`)."""
        return pretrained.path(self.name)

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The shipped ``config.json`` (model name, options, parameters, test metrics)."""
        return json.loads((self.files() / pretrained.CONFIG_FILE).read_text(encoding="utf-8"))

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata as data (a new dict each time), every figure read from ``config.json``.

        Keys: ``model`` and ``options`` (:func:`hnets.build_model`'s arguments),
        ``num_params``, ``dataset`` (``name``, ``title``, ``variant``, ``standin``,
        ``classes``), ``metrics`` (``test``: ``split``, ``n`` images, ``accuracy``,
        ``error``), ``input_shape`` ``(C, H, W)``, ``preprocessing`` (the function
        ``hnets predict`` applies to an image file and the values it produces),
        ``epochs``, ``recipe`` (the training settings as run), ``command``,
        ``sha256``, ``license``.
        """
        from .checkpoint import checkpoint_classes, checkpoint_dataset
        from .data.registry import DATASETS

        config = copy.deepcopy(self.config)  # the caller may change what it is given
        extra = config.get("extra", {})
        dataset = checkpoint_dataset(config)
        spec = DATASETS[dataset]
        shape = extra.get("image_shape") or list(spec.image_shape or ())
        return {
            "model": config["model"],
            "options": config.get("options", {}),
            "num_params": config["parameters"],
            "dataset": {
                "name": dataset,
                "title": spec.title,
                "variant": extra.get("data_variant"),
                "standin": bool(extra.get("standin", spec.is_standin(extra["data_variant"]))),
                "classes": list(checkpoint_classes(config)),
            },
            "metrics": {
                "test": {
                    "split": "test",
                    "n": extra["test_n"],
                    "accuracy": extra["test_accuracy"],
                    "error": extra["test_error"],
                }
            },
            "input_shape": [int(v) for v in shape],
            "preprocessing": {
                "function": _PREPROCESS_FUNCTIONS[spec.preprocess],
                "output": "float32 (1, 28, 28) in [0, 1], light on black",
                "eval_blur": float(config.get("options", {}).get("eval_blur", 0.0)),
            },
            "epochs": extra.get("epoch"),
            "recipe": extra.get("train_config", {}),
            "command": self.command,
            "sha256": self.sha256,
            "license": self.license,
        }


_RECIPE = "hnets train --model {model} --variant standin"
_UPRIGHT = (
    "hnets train --model {model} --variant upright --no-augment --epochs 20 "
    "--train-split train --width 1"
)

#: The shipped models by name, in the order :func:`list_models` gives them.
WEIGHTS: dict[str, Weights] = {
    w.name: w
    for w in (
        Weights(
            "hnet-rotmnist",
            _RECIPE.format(model="hnet"),
            "H-Net (HNetMNIST) on the Rot-MNIST stand-in, rotation-augmented",
        ),
        Weights(
            "cnn-rotmnist",
            _RECIPE.format(model="cnn"),
            "CNN (RegularCNN) of the same size on the Rot-MNIST stand-in, rotation-augmented",
        ),
        Weights(
            "hnet-rotfashion",
            "hnets train --model hnet --dataset rotfashion --variant rotated",
            "H-Net (HNetMNIST) on Rot-Fashion-MNIST, rotation-augmented",
        ),
        Weights(
            "cnn-rotfashion",
            "hnets train --model cnn --dataset rotfashion --variant rotated",
            "CNN (RegularCNN) of the same size on Rot-Fashion-MNIST, rotation-augmented",
        ),
        Weights(
            "hnet-upright",
            _UPRIGHT.format(model="hnet"),
            "H-Net trained on upright digits only (stand-in), tested on rotated ones",
        ),
        Weights(
            "cnn-upright",
            _UPRIGHT.format(model="cnn"),
            "CNN trained on upright digits only (stand-in), tested on rotated ones",
        ),
    )
}


def list_models() -> list[str]:
    """The registered pretrained model names (``hnet-rotmnist``, ``cnn-rotmnist``, ...)."""
    return list(WEIGHTS)


def get_weights(name: str) -> Weights:
    """The :class:`Weights` of a registered model.

    Raises:
        CheckpointError: ``name`` is not registered (the message lists the names).
    """
    try:
        return WEIGHTS[name]
    except KeyError:
        raise CheckpointError(
            f"{name}: no such pretrained model; hnets ships {', '.join(WEIGHTS)}"
        ) from None


def get_model(name: str, pretrained: bool = False, **options: Any) -> nn.Module:
    """Build a registered model, with its shipped weights when ``pretrained``.

    The architecture and its options are the shipped run's (``config.json``);
    ``options`` override them (:func:`hnets.build_model`'s keywords, e.g.
    ``eval_blur=0.0``). With ``pretrained=True`` the weights are checked against their
    sha256, loaded strictly (so options that change a tensor's shape are refused),
    and the model is returned in eval mode on the CPU with ``hnets_checkpoint`` (the
    shipped ``config.json``); without, it is freshly initialised, in training mode.

    Shape:
        ``(B, C, H, W)`` images as :attr:`Weights.meta` ``["input_shape"]`` says, in
        ``[0, 1]`` -> logits ``(B, n_classes)``.

    Raises:
        CheckpointError: unknown name, damaged weights, or options the weights do not fit.
    """
    from .checkpoint import load_model
    from .models import build_model

    weights = get_weights(name)
    config = weights.config
    merged = {**config.get("options", {}), **options}
    if not pretrained:
        return build_model(config["model"], **merged)
    model = load_model(weights.path())
    if not options:
        return model
    rebuilt = build_model(config["model"], **merged)
    try:
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{name}: the shipped weights do not fit options {options} ({first})"
        ) from None
    rebuilt.hnets_checkpoint = model.hnets_checkpoint
    return rebuilt.eval()
