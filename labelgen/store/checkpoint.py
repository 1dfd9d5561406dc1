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


def checkpoint_position(path: Path) -> dict[str, Any] | None:
    """Where a training's resume state stands, without reading its tensors (memory-mapped):
    {"next_epoch", "next_step", "shards"}; None when there is no readable one."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a damaged file: `load_resume_state` moves it aside when the training starts
        return None
    return {"next_epoch": saved["epoch"] + 1, "next_step": saved.get("next_step", 0), "shards": saved.get("shards")}


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
    """Everything a training resumes from, saved to its `last.pt` at every epoch end and every few
    steps inside an epoch (`labelgen.training.loop`): the model, its optimizer and (train_cam)
    scheduler; the position, `next_epoch` and `next_step` (the step of that epoch to run next, 0 at
    an epoch boundary); the epoch's running sums for its log entry; one log entry per finished
    epoch; (train_cam's gt_miou selection) the best epoch so far; the number of micro-batches a step
    is cut into (`shards`, kept on a resume with fewer ranks); and, inside an epoch, every rank's
    generator states (`rng`, one dict a rank; an epoch boundary needs none: every epoch seeds them
    from (seed, epoch, rank))."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    next_epoch: int = 0
    next_step: int = 0
    epoch_sums: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    shards: int | None = None
    rng: list[dict[str, Any]] | None = None


def save_training_state(state: TrainingState, path: Path) -> None:
    """Write `state` as it stands: at an epoch boundary (`next_step` 0) or after step `next_step - 1`."""
    saved = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.next_epoch - 1,  # the last finished epoch
        "next_step": state.next_step,
        "epoch_sums": state.epoch_sums,
        "history": state.history,
        "shards": state.shards,
    }
    if state.scheduler is not None:
        saved["scheduler"] = state.scheduler.state_dict()
    if state.best is not None:
        saved["best"] = state.best
    if state.rng is not None:
        saved["rng"] = state.rng
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
    state.next_step = saved.get("next_step", 0)
    state.epoch_sums = saved.get("epoch_sums", {})
    state.history = saved["history"]
    state.best = saved.get("best")
    state.shards = saved.get("shards")
    state.rng = saved.get("rng")
    where = f"step {state.next_step} of epoch {state.next_epoch}" if state.next_step else f"epoch {state.next_epoch}"
    log.info("%s: resuming at %s from %s", name, where, path)
