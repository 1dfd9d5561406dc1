"""Training augmentation of stage 2, as the reference's mmseg pipeline (weaktr-method.md §3.3):
random-ratio resize, random crop with a category ratio limit, flip, photometric distortion, pad.
Pure numpy/PIL functions of (image, mask, rng)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from labelgen.data.masks import IGNORE_INDEX


def random_resize(
    image: np.ndarray, mask: np.ndarray, short: int, ratio_range: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Keep-ratio resize to short side ≈ short·r (long side at most 8·short·r), r ~ U(ratio_range)."""
    r = rng.uniform(*ratio_range)
    h, w = mask.shape
    scale = min(short * r / min(h, w), 8 * short * r / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return image, mask


def random_crop(
    image: np.ndarray, mask: np.ndarray, crop: int, cat_max_ratio: float, rng: np.random.Generator, tries: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """A crop×crop window (smaller images are kept whole) in which no single class covers more than
    cat_max_ratio of the labelled pixels, if one is found in `tries` draws (mmseg's rule)."""
    h, w = mask.shape
    for _ in range(tries):
        y = int(rng.integers(0, max(h - crop, 0) + 1))
        x = int(rng.integers(0, max(w - crop, 0) + 1))
        window = mask[y : y + crop, x : x + crop]
        _, counts = np.unique(window[window != IGNORE_INDEX], return_counts=True)
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return image[y : y + crop, x : x + crop], mask[y : y + crop, x : x + crop]


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg PhotoMetricDistortion defaults: brightness ±32, contrast and saturation ×[0.5, 1.5],
    hue ±18 (OpenCV units, 180 per turn); each with probability 0.5, contrast first or last."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img = img + rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        img = img * rng.uniform(0.5, 1.5)
    img = np.clip(img, 0, 255)
    hsv = np.asarray(Image.fromarray(img.astype(np.uint8)).convert("HSV")).astype(np.float32)
    if rng.random() < 0.5:
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-18, 18) * 256 / 180) % 256
    img = np.asarray(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        img = img * rng.uniform(0.5, 1.5)
    return np.clip(img, 0, 255).astype(np.uint8)


def pad_to(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right to size×size: image with 0, mask with ignore."""
    h, w = mask.shape
    image = np.pad(image, ((0, size - h), (0, size - w), (0, 0)))
    mask = np.pad(mask, ((0, size - h), (0, size - w)), constant_values=IGNORE_INDEX)
    return image, mask
