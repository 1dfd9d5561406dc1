"""Numeric precision of a model stage: bf16 autocast or plain fp32, on CUDA and on CPU alike.

bf16 autocast runs matmuls and attention in bfloat16 and keeps reductions (softmax, norms, losses)
in float32. CUDA GPUs since Ampere and CPUs with AVX512-BF16 or AMX run it natively, 2–4× faster
than fp32 for a ViT; elsewhere it is emulated and slower, which is worth a warning, not an error.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

from labelgen.errors import ConfigError

PRECISIONS = ("bf16", "fp32")

log = logging.getLogger(__name__)


def check_precision(precision: str, where: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"{where}={precision!r}; allowed: {', '.join(PRECISIONS)}")


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    check_precision(precision, "precision")
    if precision == "fp32":
        return contextlib.nullcontext()
    if not native_bf16(device):
        _warn_emulated(device.type)
    return torch.autocast(device.type, dtype=torch.bfloat16)


@functools.cache
def _warn_emulated(device_type: str) -> None:  # once per process
    log.warning("precision=bf16 on a %s without native bf16 is emulated and slow; set precision='fp32'", device_type)
