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
        counts = np.bincount(window[window != IGNORE_INDEX], minlength=256)  # linear time; np.unique sorts
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return image[y : y + crop, x : x + crop], mask[y : y + crop, x : x + crop]


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg PhotoMetricDistortion defaults: brightness ±32, contrast and saturation ×[0.5, 1.5],
    hue ±18 (OpenCV units, 180 per turn); each with probability 0.5, contrast first or last.

    Each step is the same float32 function of a pixel's uint8 value everywhere in the image, so it
    runs as a 256-entry lookup table: the float32 arithmetic happens once per value, not per pixel.
    Between steps the image is truncated to uint8, because PIL converts to HSV in uint8; mmseg stays
    in float32 throughout, so the two differ by less than one grey level a step."""
    values = np.arange(256, dtype=np.float32)
    first = values
    if rng.random() < 0.5:
        first = first + rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        first = first * rng.uniform(0.5, 1.5)
    img = _lookup(image, first)
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = rng.uniform(-18, 18) * 256 / 180 if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:  # as mmseg, no HSV round trip (lossy) unless needed
        hsv = np.array(Image.fromarray(img).convert("HSV"))
        if saturation is not None:
            hsv[..., 1] = _lookup(hsv[..., 1], values * saturation)
        if hue is not None:
            hsv[..., 0] = _lookup(hsv[..., 0], (values + hue) % 256)
        img = np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))
    if not contrast_first and rng.random() < 0.5:
        img = _lookup(img, values * rng.uniform(0.5, 1.5))
    return img


def _lookup(channel: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """uint8 values through a float32 table of 256 entries, clipped to [0, 255] and truncated."""
    return np.clip(mapped, 0, 255).astype(np.uint8)[channel]


def pad_to(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right to size×size: image with 0, mask with ignore."""
    h, w = mask.shape
    image = np.pad(image, ((0, size - h), (0, size - w), (0, 0)))
    mask = np.pad(mask, ((0, size - h), (0, size - w)), constant_values=IGNORE_INDEX)
    return image, mask
