"""What this machine offers a unit: the cores it may use, the GPUs it sees, the torch device it
runs on. The one place that counts cores or GPUs; it imports torch only where a caller needs it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from labelgen.errors import ArtifactError

if TYPE_CHECKING:
    import torch


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (a SLURM or taskset allotment) where the
    OS reports one, else every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def use_every_core() -> None:
    """For a unit that has its machine to itself (a training run): torch threads = available cores,
    set in the unit itself so the count is the same in a worker, a test process or a resumed run."""
    import torch

    torch.set_num_threads(available_cores())


def local_gpu_count() -> int:
    """NVIDIA GPUs this process may use, without importing torch (which costs the driver seconds and
    about 500 MB before any work): the driver's device list, narrowed by CUDA_VISIBLE_DEVICES."""
    devices = Path("/proc/driver/nvidia/gpus")
    present = len(list(devices.iterdir())) if devices.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    return min(present, len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]))


def pick_device(requested: str) -> torch.device:
    """'auto' -> cuda when present, else cpu."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ArtifactError("device=cuda was asked for but no CUDA device is visible on this worker")
    return torch.device(requested)


def rank_device(local_rank: int) -> torch.device:
    """The device of a training rank: `pick_device("auto")`; on a worker that sees several GPUs (ranks
    sharing one machine's GPUs), the `local_rank`-th of them, made the current CUDA device."""
    import torch

    device = pick_device("auto")
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device
