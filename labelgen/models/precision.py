"""Numeric precision of a model stage: bf16 autocast or plain fp32, on CUDA and on CPU alike.

bf16 autocast runs matmuls and attention in bfloat16 and keeps reductions (softmax, norms, losses)
in float32. CUDA GPUs since Ampere and CPUs with AVX512-BF16 or AMX run it natively, 2–4× faster
than fp32 for a ViT; elsewhere it is emulated and slower than fp32. `auto` (the default) takes bf16
where it is native and fp32 elsewhere, and logs which it took.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import typing

import torch

from labelgen.config import Precision
from labelgen.errors import ConfigError

PRECISIONS = typing.get_args(Precision)  # labelgen.config.Precision, spelled there once

log = logging.getLogger(__name__)


def check_precision(precision: str, where: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"{where}={precision!r}; allowed: {', '.join(PRECISIONS)}")


@functools.cache
def native_bf16(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(device: torch.device, precision: str) -> str:
    """`bf16` or `fp32`: what `precision` means on `device`."""
    check_precision(precision, "precision")
    if precision == "auto":
        chosen = "bf16" if native_bf16(device.type) else "fp32"
        _log_auto(device.type, chosen)
        return chosen
    if precision == "bf16" and not native_bf16(device.type):
        _warn_emulated(device.type)
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    if resolve_precision(device, precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@functools.cache
def _log_auto(device_type: str, chosen: str) -> None:  # once per process
    why = "native" if chosen == "bf16" else "bf16 is not native here"
    log.info("precision=auto on %s: %s (%s)", device_type, chosen, why)


@functools.cache
def _warn_emulated(device_type: str) -> None:  # once per process
    log.warning("precision=bf16 on a %s without native bf16 is emulated and slow; use 'auto' or 'fp32'", device_type)
