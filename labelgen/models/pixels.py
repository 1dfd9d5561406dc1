"""The pixel normalisation a backbone was pretrained with. Each model holds it (`PixelNormalised`:
buffers and `normalise`, as segment-anything): the models' entry points take uint8 images only and
normalise them themselves, so an input normalised twice, or not at all, cannot be passed (TypeError);
callers never thread (mean, std) around."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import timm
import torch
from torch import Tensor, nn

Stats = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per RGB channel
# named pixel statistics (mean, std) of [0, 1] RGB, for weights whose own are not known
NAMED_STATS: dict[str, Stats] = {
    "imagenet": (tuple(timm.data.IMAGENET_DEFAULT_MEAN), tuple(timm.data.IMAGENET_DEFAULT_STD)),  # DeiT, DINOv2
    "inception": (tuple(timm.data.IMAGENET_INCEPTION_MEAN), tuple(timm.data.IMAGENET_INCEPTION_STD)),  # AugReg: 0.5
    "clip": (tuple(timm.data.OPENAI_CLIP_MEAN), tuple(timm.data.OPENAI_CLIP_STD)),  # CLIP, EVA-02
}


def pixel_stats(arch: str, weights: str | None, choice: str = "from_weights") -> Stats:
    """(mean, std) of the pixels the weights were trained on. `choice` names a set of `NAMED_STATS`,
    or "from_weights": the pretrained config of a hub tag ("hub:vit_small_patch16_384.augreg_in21k_ft_in1k"
    -> 0.5), else (a file, none) of the architecture's default tag; ImageNet's when timm knows neither."""
    if choice != "from_weights":
        return NAMED_STATS[choice]
    tag = weights.removeprefix("hub:") if weights and weights.startswith("hub:") else arch
    cfg = timm.get_pretrained_cfg(tag) or timm.get_pretrained_cfg(arch)
    if cfg is None:
        return NAMED_STATS["imagenet"]
    return tuple(cfg.mean), tuple(cfg.std)


class ToPixels:
    """A transform from a normalised float 3×H×W tensor (timm's training transform: ToTensor,
    Normalize, RandomErasing) back to uint8 pixels round((x·std + mean)·255), clamped to 0..255,
    so a training loader hands models uint8 as every other path does. Pixels timm left alone come
    back exactly; erased ones (random normal values) are clamped to the pixel range."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        return ((x * self.std + self.mean) * 255.0).round_().clamp_(0, 255).to(torch.uint8)


class PixelNormalised(nn.Module):
    """A model that normalises its own input: `pixel_mean`/`pixel_std` buffers (not in the state
    dict; checkpoints record them as "mean"/"std") and `normalise`, which its entry points call."""

    pixel_mean: Tensor
    pixel_std: Tensor

    def set_normalisation(self, mean, std) -> None:
        self.normalisation = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        device = self.pixel_mean.device if hasattr(self, "pixel_mean") else None
        for name, values in zip(("pixel_mean", "pixel_std"), self.normalisation, strict=True):
            buffer = torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            self.register_buffer(name, buffer, persistent=False)

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 B×3×H×W -> float32 (x/255 − mean) / std on the images' device, the same arithmetic
        as timm's ToTensor + Normalize: every model input of labelgen goes through here. Raises
        TypeError for any other dtype (a float tensor may already be normalised: passing it is a
        mistake that would go unnoticed) and ValueError for a shape that is not B×3×H×W."""
        if images.dtype != torch.uint8:
            raise TypeError(
                f"{type(self).__name__} takes uint8 pixels (B, 3, H, W) and normalises them itself; got {images.dtype}"
            )
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} takes B×3×H×W uint8 images; got shape {tuple(images.shape)}")
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
