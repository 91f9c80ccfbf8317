"""The run directory: claiming it, checkpoints in and out, and every file a run writes.

A run directory holds ``config.json`` and ``model.safetensors`` (the best model so far),
``checkpoint.pt`` (everything needed to resume), ``metrics.jsonl`` (a line per epoch),
and at the end ``summary.json`` and ``curves.png``. Every file is written atomically,
and by rank 0 alone.

The checkpoint holds model, optimizer, AMP scaler, schedule position, epoch, best
metric, RNG states and the configuration, so a run killed at any point resumes to the
same result on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import append_line, atomic_write, read_json, write_json
from ..checkpoint import (
    load_training_state,
    rng_state,
    save_model,
    save_training_state,
    set_rng_state,
    unwrap_model,
    update_model_extra,
)
from ..errors import CheckpointError, HNetsError
from ..evaluation import plot_curves
from .batches import RunData
from .config import EVAL_ONLY_MODEL_OPTIONS, RUNTIME_FIELDS, TrainConfig, with_settings
from .metrics import RunState
from .setup import build_for
from .world import World

__all__ = [
    "RunDir",
    "load_run_config",
    "run_config",
    "restore",
    "cpu_state",
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "CURVES_FILE",
]

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"
#: Files whose presence means a directory holds a run.
_RUN_FILES = ("config.json", METRICS_FILE, CHECKPOINT_FILE, SUMMARY_FILE)
#: Everything a run writes (removed by ``overwrite``).
_OUTPUT_FILES = (*_RUN_FILES, "model.safetensors", CURVES_FILE, "confusion.png")


def load_run_config(out_dir: str | os.PathLike[str]) -> TrainConfig:
    """The settings of the run saved in ``out_dir/checkpoint.pt``."""
    path = Path(out_dir) / CHECKPOINT_FILE
    return _saved_config(load_training_state(path), path)


def run_config(
    out_dir: str | os.PathLike[str], settings: Mapping[str, Any], *, resume: bool
) -> TrainConfig:
    """What a run in ``out_dir`` trains with: ``settings`` on top of the saved run's
    (with ``resume``, where there is one) or the recipe's defaults (:func:`with_settings`).
    """
    resuming = resume and (Path(out_dir) / CHECKPOINT_FILE).exists()
    return with_settings(load_run_config(out_dir) if resuming else TrainConfig(), settings)


@dataclass
class RunDir:
    """The directory of one run (``path``), as the processes of ``world`` see it."""

    path: Path
    config: TrainConfig
    world: World

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    def claim(self, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
        """Refuse, resume or clear the directory; return the training state to resume from."""
        out_dir, world = self.path, self.world
        if out_dir.exists() and not out_dir.is_dir():
            raise HNetsError(f"{out_dir} exists and is not a directory")
        found = [name for name in _RUN_FILES if (out_dir / name).exists()]
        saved = None
        if found and resume:
            saved = self._resumable(found)
        elif found and not overwrite:
            raise HNetsError(
                f"{out_dir} already holds a run ({', '.join(found)}): use --resume to "
                "continue it, --overwrite to replace it, or another --out"
            )
        world.barrier()  # every process has looked before rank 0 changes anything
        if world.is_main:
            if found and overwrite:
                for name in _OUTPUT_FILES:
                    (out_dir / name).unlink(missing_ok=True)
            _check_writable(out_dir)
        return saved

    def _resumable(self, found: list[str]) -> dict[str, Any]:
        """The saved training state, if this run may continue from it."""
        path = self.checkpoint
        if not path.exists():
            raise HNetsError(
                f"{self.path} holds a run ({', '.join(found)}) but no {CHECKPOINT_FILE} "
                "to resume from; use --overwrite to start again"
            )
        saved = load_training_state(path)
        _check_resumable(_saved_config(saved, path), self.config, path)
        if saved.get("step_in_epoch") and saved.get("world_size") != self.world.size:
            raise HNetsError(
                f"{path} was saved mid-epoch by {saved.get('world_size')} processes; "
                f"resume it with as many (not {self.world.size})"
            )
        return saved

    def rewrite_outputs(self, data: RunData, run: RunState) -> None:
        """Make ``metrics.jsonl`` and the saved model agree with the checkpoint being resumed.

        A run killed after its checkpoint but before the next one may have written an
        epoch's metrics line, or a better model, that the resumed run will redo.
        """
        with atomic_write(self.path / METRICS_FILE, "w") as fh:
            fh.writelines(json.dumps(row, sort_keys=True) + "\n" for row in run.history)
        if run.best_state is not None:
            best = build_for(self.config, data)
            best.load_state_dict(run.best_state)
            save_model(best, self.path, extra=self._model_extra(data, run))

    def save_checkpoint(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        run: RunState,
        steps_per_epoch: int,
    ) -> None:
        """Write ``checkpoint.pt``: everything needed to continue from ``run``."""
        save_training_state(
            self.checkpoint,
            {
                "config": self.config.to_dict(),
                "epoch": run.epoch,
                "step_in_epoch": run.step,
                "partial": run.partial or {},
                "world_size": self.world.size,
                "model": cpu_state(model),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                # the schedule is a pure function of the step (lr_at): its state is the step
                "scheduler": {
                    "schedule": self.config.schedule,
                    "steps_per_epoch": steps_per_epoch,
                    "step": run.epoch * steps_per_epoch + run.step,
                },
                "best": run.best or {},
                "best_model": run.best_state or {},
                "history": run.history,
                "rng": rng_state(),
                "versions": _versions(),
            },
        )

    def save_epoch(self, model: nn.Module, data: RunData, run: RunState, improved: bool) -> None:
        """After the checkpoint of an epoch: the model if it is the best, the metrics line."""
        if improved:
            save_model(model, self.path, extra=self._model_extra(data, run))
        append_line(self.path / METRICS_FILE, json.dumps(run.history[-1], sort_keys=True))

    def finished_summary(self) -> dict[str, Any] | None:
        """A run to resume with nothing left to do: its summary as written, else ``None``.

        So that rerunning a finished run's command (a job array retried, ``--plan``
        lines run twice) reads no data and rewrites nothing: asked before anything is
        loaded, from the checkpoint's settings (a run with other settings is refused
        here, as :meth:`claim` would) and epoch count. A run whose test figures were
        left out (``test=False``) and are now asked for is not finished.
        """
        path = self.path / SUMMARY_FILE
        if not path.is_file() or not self.checkpoint.is_file():
            return None  # not finished, or not a run: claim() says what is wrong
        saved = self._resumable([CHECKPOINT_FILE])
        if int(saved["epoch"]) < self.config.epochs or saved.get("step_in_epoch"):
            return None
        summary = read_json(path)
        if self.config.test and summary.get("test_n") is None:
            return None
        return summary

    def write_summary(
        self,
        data: RunData,
        run: RunState,
        test: Mapping[str, Any],
        *,
        parameters: int,
        eval_seconds: float,
        amp_dtype: torch.dtype | None,
    ) -> dict[str, Any]:
        """Write ``summary.json`` and ``curves.png``; add the test figures to the model.

        ``test`` is :func:`hnets.evaluation.evaluate`'s result on the test split, or
        ``None`` figures where the test split was not read. Returns the summary.
        """
        config = self.config
        train_seconds = sum(row["train_seconds"] for row in run.history)
        summary = {
            "test_accuracy": test["accuracy"],
            "test_error": test["error"],
            "test_n": test["n"],
            "test": test,
            "best_epoch": run.best["epoch"],
            "valid_accuracy": run.best["valid_acc"],
            "valid_loss": run.best["valid_loss"],
            "epochs": len(run.history),
            "parameters": parameters,
            "wall_seconds": sum(row["seconds"] for row in run.history) + eval_seconds,
            "train_images_per_s": sum(row["train_n"] for row in run.history)
            / max(train_seconds, 1e-9),
            "device": str(self.world.device),
            "world_size": self.world.size,
            # intra-op threads of the process that finished the run (per process):
            # wall_seconds x threads x world_size is the run's core time
            "threads": torch.get_num_threads(),
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
            "seed": config.seed,
            "versions": _versions(),
            "data": {
                **data.description(),
                "dir": str(data.vdir),
                "train_n": len(data.train),
                "valid_n": len(data.valid) if data.valid is not None else 0,
                "test_n": test["n"],
            },
            "config": config.to_dict(),
        }
        write_json(self.path / SUMMARY_FILE, summary)
        plot_curves(run.history, self.path / CURVES_FILE)
        if config.test:
            figures = {f"test_{key}": test[key] for key in ("accuracy", "error", "n")}
            update_model_extra(self.path, figures)
        return summary

    def _model_extra(self, data: RunData, run: RunState) -> dict[str, Any]:
        """What ``config.json`` records beside the model: its epoch, data and recipe."""
        best = run.best or {}
        return {
            "epoch": best.get("epoch"),
            "valid_accuracy": best.get("valid_acc"),
            "valid_loss": best.get("valid_loss"),
            "data_variant": data.variant,
            "standin": data.train.standin,
            **{k: v for k, v in data.description().items() if k not in ("variant", "standin")},
            "train_config": self.config.to_dict(),
        }


def restore(
    saved: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    path: Path,
) -> RunState:
    """Load a checkpoint's state into the run's objects and the RNGs; return where it stood."""
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scaler.is_enabled() and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        return RunState(
            epoch=int(saved["epoch"]),
            step=int(saved["step_in_epoch"]),
            partial=dict(saved["partial"]) or None,
            best=dict(saved["best"]) or None,
            best_state=dict(saved["best_model"]) or None,
            history=list(saved["history"]),
        )
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} does not fit this run ({reason[:200]})") from None


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the (unwrapped) model's weights on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()}


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise HNetsError(f"cannot write into {out_dir}: {exc.strerror or exc}") from None


def _saved_config(saved: Mapping[str, Any], path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(saved["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad training settings ({exc})") from None


def _check_resumable(saved: TrainConfig, config: TrainConfig, path: Path) -> None:
    differences = []
    for f in dataclasses.fields(TrainConfig):
        before, now = getattr(saved, f.name), getattr(config, f.name)
        if f.name in RUNTIME_FIELDS or before == now:
            continue
        if f.name == "epochs" and now > before:
            continue  # extending a run is allowed
        if f.name == "model_options" and _training_options(before) == _training_options(now):
            continue  # options that act at evaluation only (eval_blur) may change
        differences.append(f"{f.name} {before!r} -> {now!r}")
    if differences:
        raise HNetsError(
            f"cannot resume {path}: the settings differ ({'; '.join(differences)}); "
            "use the saved settings, or --overwrite to start again"
        )


def _training_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in EVAL_ONLY_MODEL_OPTIONS}


def _versions() -> dict[str, str]:
    from .._version import __version__

    return {
        "hnets": __version__,
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
