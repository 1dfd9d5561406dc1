"""Multi-scale + flip CAM inference (weaktr-method.md §1.7), batched over images of one size."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from labelgen.models.weaktr import WeakTr, WeakTrConfig
from labelgen.store.checkpoint import load_checkpoint


def cam_checkpoint(model: WeakTr, mean, std, **extra) -> dict:
    return {"config": asdict(model.config), "mean": list(mean), "std": list(std), "model": model.state_dict(), **extra}


def load_cam_model(path: Path, device: torch.device) -> tuple[WeakTr, tuple, tuple]:
    state = load_checkpoint(path)
    model = WeakTr(WeakTrConfig(**state["config"]), weights=None)
    model.load_state_dict(state["model"], strict=True)
    return model.to(device).eval(), tuple(state["mean"]), tuple(state["std"])


def _to_batch(images: list[np.ndarray], scale: float, mean, std, device) -> torch.Tensor:
    h, w = images[0].shape[:2]
    size = (round(w * scale), round(h * scale))
    arrays = [np.asarray(Image.fromarray(im).resize(size, Image.BICUBIC)) if scale != 1.0 else im for im in images]
    x = torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def multiscale_cams(
    model: WeakTr,
    images: list[np.ndarray],
    tags: list[tuple[int, ...]],
    scales: tuple[float, ...],
    flip: bool,
    kind: str,
    out_size: tuple[int, int],
    mean,
    std,
) -> list[np.ndarray]:
    """CAMs of the tagged classes of same-size images (H×W×3 uint8): per image a (k, h, w) float32
    array, k = len(tags), each map min–max normalised; (h, w) = out_size.

    For every scale (and its horizontal flip) the CAMs are upsampled bilinearly to out_size,
    un-flipped and summed; absent classes are never looked at, which equals zeroing them.
    """
    device = next(model.parameters()).device
    use_amp = device.type == "cuda"
    total = None
    for scale in scales:
        x = _to_batch(images, scale, mean, std, device)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            cams = model.cams(x, kind)
        cams = F.interpolate(cams.float(), size=out_size, mode="bilinear", align_corners=False)
        if flip:
            n = len(images)
            cams = cams[:n] + cams[n:].flip(-1)
        total = cams if total is None else total + cams
    out = []
    for i, t in enumerate(tags):
        maps = total[i, [c - 1 for c in t]]
        lo = maps.amin(dim=(1, 2), keepdim=True)
        hi = maps.amax(dim=(1, 2), keepdim=True)
        out.append(((maps - lo) / (hi - lo + 1e-8)).cpu().numpy())
    return out
