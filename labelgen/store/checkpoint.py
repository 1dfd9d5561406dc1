"""Checkpoints: written atomically, read with `weights_only=True`; and the resume state both
trainers share (`TrainingState`, `save_training_state`, `resume_training`)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from labelgen.errors import ArtifactError
from labelgen.store.artifact import write_atomic

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save, atomically (`write_atomic`): a crash leaves the old checkpoint or the new one, and
    a failed save no temp file."""
    write_atomic(path, lambda f: torch.save(state, f), "wb")


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ArtifactError(f"checkpoint {path} not found") from e
    except Exception as e:  # a truncated or foreign file raises many types
        raise ArtifactError(f"{path}: not a readable labelgen checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or "model" not in state:
        raise ArtifactError(f"{path}: not a labelgen checkpoint (no 'model' entry)")
    return state


def load_resume_state(path: Path) -> dict[str, Any] | None:
    """A training's resume state, or None when there is none. A damaged file (a crash mid-write, a
    bad disk) is moved aside with a warning and training restarts: it is never read as valid."""
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path)
    except ArtifactError as e:
        damaged = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, damaged)
        log.warning("%s; moved to %s, training starts again from epoch 0", e, damaged)
        return None


@dataclass
class TrainingState:
    """Everything a training resumes from, saved to its `last.pt` after every epoch: the model, its
    optimizer and (train_cam) scheduler, the next epoch to run, one log entry per finished epoch, and
    (train_cam's gt_miou selection) the best epoch so far. The RNGs need no saving: every epoch
    seeds them from (seed, epoch)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    next_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


def save_training_state(state: TrainingState, path: Path) -> None:
    """Write `state` as finished through epoch `state.next_epoch - 1`."""
    saved = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.next_epoch - 1,
        "history": state.history,
    }
    if state.scheduler is not None:
        saved["scheduler"] = state.scheduler.state_dict()
    if state.best is not None:
        saved["best"] = state.best
    save_checkpoint(path, saved)


def resume_training(state: TrainingState, path: Path, name: str) -> None:
    """Load `path` (a `save_training_state` file) into `state`, or leave it as built when there is
    none or it is damaged (`load_resume_state`)."""
    saved = load_resume_state(path)
    if saved is None:
        return
    state.model.load_state_dict(saved["model"], strict=True)
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.scheduler is not None:
        state.scheduler.load_state_dict(saved["scheduler"])
    state.next_epoch = saved["epoch"] + 1
    state.history = saved["history"]
    state.best = saved.get("best")
    log.info("%s: resuming after epoch %d from %s", name, saved["epoch"], path)
