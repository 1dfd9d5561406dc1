"""Checkpoints: written atomically, read with `weights_only=True`."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from labelgen.errors import ArtifactError

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file, fsync, rename: a crash leaves the old checkpoint or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def pick_device(requested: str) -> torch.device:
    """'auto' -> cuda when present, else cpu."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ArtifactError("device=cuda was asked for but no CUDA device is visible on this worker")
    return torch.device(requested)
