"""Multi-scale + flip CAM inference (weaktr-method.md §1.7), batched over images of one size."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from labelgen.data.training import normalise_batch
from labelgen.models.precision import autocast
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
    return normalise_batch(torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2), mean, std)


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
    precision: str,
    views_per_pass: int,
) -> list[np.ndarray]:
    """CAMs of the tagged classes of same-size images (H×W×3 uint8): per image a (k, h, w) float32
    array, k = len(tags), each map min–max normalised; (h, w) = out_size. The images and their flips
    go through the model `views_per_pass` at a time: large batches feed a GPU; on a CPU one view a
    pass is fastest, because the attention maps of one view already overflow the caches.

    For every scale (and its horizontal flip) the CAMs are upsampled bilinearly to out_size,
    un-flipped and summed; absent classes are never looked at, which equals zeroing them. Two exact
    shortcuts keep the upsampling cheap: only the tagged classes are upsampled, and a flipped CAM is
    un-flipped and added before upsampling (bilinear resizing commutes with a horizontal flip).
    """
    device = next(model.parameters()).device
    n = len(images)
    channels = [torch.tensor([c - 1 for c in t], device=device) for t in tags]
    totals: list[torch.Tensor | None] = [None] * n
    for scale in scales:
        x = _to_batch(images, scale, mean, std, device)
        views = torch.cat([x, x.flip(-1)]) if flip else x
        with autocast(device, precision):
            cams = torch.cat([model.cams(v, kind).float() for v in views.split(views_per_pass)])
        if flip:
            cams = cams[:n] + cams[n:].flip(-1)
        for i in range(n):
            up = F.interpolate(cams[i : i + 1, channels[i]], size=out_size, mode="bilinear", align_corners=False)[0]
            totals[i] = up if totals[i] is None else totals[i] + up
    out = []
    for maps in totals:
        lo = maps.amin(dim=(1, 2), keepdim=True)
        hi = maps.amax(dim=(1, 2), keepdim=True)
        out.append(((maps - lo) / (hi - lo + 1e-8)).cpu().numpy())
    return out
