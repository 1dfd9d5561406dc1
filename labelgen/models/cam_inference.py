"""Multi-scale + flip CAM inference (weaktr-method.md §1.7), batched over images of one size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from labelgen.models.precision import autocast
from labelgen.models.weaktr import WeakTr, WeakTrConfig
from labelgen.store.checkpoint import load_checkpoint, save_checkpoint


def save_cam_model(path: Path, model: WeakTr, **extra) -> None:
    """The model's config, normalisation ("mean", "std") and weights, plus `extra` entries (epoch, ...)."""
    save_checkpoint(path, model.checkpoint(**extra))


def load_cam_model(path: Path, device: torch.device) -> WeakTr:
    """The model of a `save_cam_model` file, in eval mode on `device`, normalising as it was trained."""
    state = load_checkpoint(path)
    config = dict(state["config"])
    if "num_classes" in config:  # written before the field was named num_fg_classes
        config["num_fg_classes"] = config.pop("num_classes")
    return WeakTr(WeakTrConfig(**config), weights=None).restore(state, device)


def fit_factor(height: int, width: int, largest_scale: float, max_side: int) -> float:
    """The factor (≤ 1) applied to every view of an H×W image so that its largest view, largest_scale
    × long side, is at most max_side pixels; 1.0 (exactly) when it already is."""
    return min(1.0, max_side / (largest_scale * max(height, width)))


def view_sizes(height: int, width: int, scales: tuple[float, ...], patch: int, max_side: int) -> list[tuple[int, int]]:
    """(h, w) in pixels of the view of each scale of an H×W image, as the model sees it.

    A view is the image resized by scale × `fit_factor` (all scales keep their ratios; the largest
    view's long side is at most max_side), each side rounded and at least 1. A view with a side
    shorter than one patch is upsampled instead (aspect ratio kept) until that side is one patch,
    unless that would take its long side past max_side; a side still shorter than one patch (aspect
    ratios beyond max_side / patch) is zero-padded to one patch by the backbone. Within the bound
    the sizes are the reference's, (round(H·s), round(W·s)).
    """
    long, short = max(height, width), min(height, width)
    fit = fit_factor(height, width, max(scales), max_side)
    sizes = []
    for s in scales:
        t = s * fit
        if round(short * t) < patch:
            t = min(patch / short, max_side / long)
        sizes.append((max(1, round(height * t)), max(1, round(width * t))))
    return sizes


def upsample_cams(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners False) resize of (k, h, w) maps to (k, *size). A side of a single patch
    is replicated exactly: bilinear arithmetic would vary the constant in its last bits, and min–max
    normalisation would blow that up into a map of noise."""
    h, w = cams.shape[-2:]
    inner = (size[0] if h > 1 else 1, size[1] if w > 1 else 1)
    up = F.interpolate(cams[None], size=inner, mode="bilinear", align_corners=False)[0]
    return up.expand(cams.shape[0], *size)


def _to_batch(images: list[np.ndarray], size: tuple[int, int], device) -> torch.Tensor:
    """Same-size H×W×3 uint8 images resized (PIL bicubic) to size (h, w) -> uint8 B, 3, h, w."""
    if images[0].shape[:2] != size:
        images = [np.asarray(Image.fromarray(im).resize(size[::-1], Image.BICUBIC)) for im in images]
    return torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2)


@torch.no_grad()
def multiscale_cams(
    model: WeakTr,
    images: list[np.ndarray],
    tags: list[tuple[int, ...]],
    scales: tuple[float, ...],
    flip: bool,
    kind: str,
    out_size: tuple[int, int],
    precision: str,
    views_per_pass: int,
    *,
    max_side: int,
    cache_bytes: int,
) -> list[np.ndarray]:
    """CAMs of the tagged classes of same-size images (H×W×3 uint8): per image a (k, h, w) float32
    array, k = len(tags), each map min–max normalised to [0, 1] (all 0 where a map is constant);
    (h, w) = out_size. The images and their flips go through the model `views_per_pass` at a time:
    large batches feed a GPU; on a CPU one view a pass is fastest, because the attention maps of one
    view already overflow the caches.

    The views are sized by `view_sizes`: at most max_side pixels on their long side, at least one
    patch on their short side where the aspect ratio allows. `cache_bytes` bounds the attention maps
    a forward pass keeps between its two passes (`WeakTr.cams`); it changes speed and memory, never
    the maps.

    For every scale (and its horizontal flip) the CAMs are upsampled bilinearly to out_size,
    un-flipped and summed; absent classes are never looked at, which equals zeroing them. Two exact
    shortcuts keep the upsampling cheap: only the tagged classes are upsampled, and a flipped CAM is
    un-flipped and added before upsampling (bilinear resizing commutes with a horizontal flip).
    """
    device = next(model.parameters()).device
    n = len(images)
    h, w = images[0].shape[:2]
    channels = [torch.tensor([c - 1 for c in t], device=device) for t in tags]
    totals: list[torch.Tensor | None] = [None] * n
    for size in view_sizes(h, w, scales, model.backbone.patch_size, max_side):
        x = _to_batch(images, size, device)
        views = torch.cat([x, x.flip(-1)]) if flip else x
        with autocast(device, precision):
            cams = torch.cat([model.cams(v, kind, cache_bytes).float() for v in views.split(views_per_pass)])
        if flip:
            cams = cams[:n] + cams[n:].flip(-1)
        for i in range(n):
            up = upsample_cams(cams[i, channels[i]], out_size)
            totals[i] = up if totals[i] is None else totals[i] + up
    out = []
    for maps in totals:
        lo = maps.amin(dim=(1, 2), keepdim=True)
        hi = maps.amax(dim=(1, 2), keepdim=True)
        out.append(((maps - lo) / (hi - lo + 1e-8)).cpu().numpy())
    return out
