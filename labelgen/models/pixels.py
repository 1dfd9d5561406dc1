"""The pixel normalisation a backbone was pretrained with. Each model holds it (`PixelNormalised`:
buffers and `preprocess`, as segment-anything), so callers hand models uint8 images and never
thread (mean, std) around."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import timm
import torch
from torch import Tensor, nn


def normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the backbone's pretraining: ImageNet statistics for DeiT, 0.5 for AugReg ViTs."""
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        return tuple(timm.data.IMAGENET_DEFAULT_MEAN), tuple(timm.data.IMAGENET_DEFAULT_STD)
    return tuple(cfg.mean), tuple(cfg.std)


class PixelNormalised(nn.Module):
    """A model that normalises its own input: `pixel_mean`/`pixel_std` buffers (not in the state
    dict; checkpoints record them as "mean"/"std") and `preprocess`."""

    pixel_mean: Tensor
    pixel_std: Tensor

    def set_normalisation(self, mean, std) -> None:
        self.normalisation = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        device = self.pixel_mean.device if hasattr(self, "pixel_mean") else None
        for name, values in zip(("pixel_mean", "pixel_std"), self.normalisation, strict=True):
            buffer = torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            self.register_buffer(name, buffer, persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 (or 0..255) B×3×H×W -> float32 (x/255 − mean) / std on the images' device, the same
        arithmetic as timm's ToTensor + Normalize: every model input of labelgen goes through here."""
        return (images.float() / 255.0 - self.pixel_mean) / self.pixel_std

    def checkpoint(self, **extra: Any) -> dict[str, Any]:
        """What a model file holds: the config (a dataclass), the normalisation ("mean", "std"), the
        weights ("model"), plus `extra` entries (epoch, ...). `restore` reads it back."""
        mean, std = self.normalisation
        return {
            "config": asdict(self.config),
            "mean": list(mean),
            "std": list(std),
            "model": self.state_dict(),
            **extra,
        }

    def restore(self, state: dict[str, Any], device: torch.device) -> PixelNormalised:
        """This model with the weights and normalisation of a `checkpoint` dict, in eval mode on `device`."""
        self.load_state_dict(state["model"], strict=True)
        self.set_normalisation(state["mean"], state["std"])
        return self.to(device).eval()
