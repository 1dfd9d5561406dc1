"""Pure numerics that turn CAMs into labels (weaktr-method.md §1.7–§1.8)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Resized values alive at once in `resized_argmax` (128 MiB of float32): bounds its memory, not its result.
ARGMAX_CHUNK_VALUES = 2**25


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners False) resize of (k, h, w) maps to (k, *size); k may be 0 (a negative
    image has no tagged class, hence no map)."""
    if maps.shape[1:] == tuple(size):
        return maps
    if maps.shape[0] == 0:  # torch refuses an empty channel dimension
        return np.zeros((0, *size), np.float32)
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].numpy()


def resized_argmax(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Index (H×W int64, in 0..k-1) of the largest of the (k, h, w) maps after `resize_maps` to
    size = (H, W), the first on ties: exactly `resize_maps(maps, size).argmax(0)`, but a few maps at a
    time, so that a large image needs memory for its result and about ARGMAX_CHUNK_VALUES values,
    not for k full-size maps."""
    per_chunk = max(1, ARGMAX_CHUNK_VALUES // (size[0] * size[1]))
    best, index = None, None
    for start in range(0, maps.shape[0], per_chunk):
        resized = resize_maps(maps[start : start + per_chunk], size)
        j = resized.argmax(axis=0)
        top = np.take_along_axis(resized, j[None], axis=0)[0]
        if best is None:
            best, index = top, j
        else:
            better = top > best  # strict: ties keep the earlier map, as argmax
            best, index = np.where(better, top, best), np.where(better, j + start, index)
    return index


def cam_argmax(maps: np.ndarray, bg_threshold: float) -> np.ndarray:
    """Index map over [background, map 0, map 1, ...]: argmax after a constant background plane.

    Returns H×W int64 in 0..k (0 = background, j = maps[j-1]). The reference softmaxes first; that
    does not change the argmax.
    """
    stacked = np.concatenate([np.full((1, *maps.shape[1:]), bg_threshold, maps.dtype), maps], axis=0)
    return stacked.argmax(axis=0)


def indices_to_labels(index_map: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Map 0 -> background (0) and j -> labels[j-1]; returns uint8."""
    lut = np.concatenate([[0], labels]).astype(np.uint8)
    return lut[index_map]


def cam_to_labels(maps: np.ndarray, labels: np.ndarray, bg_threshold: float) -> np.ndarray:
    """The CAM label map without CRF: class label per pixel (0 = background)."""
    return indices_to_labels(cam_argmax(maps, bg_threshold), labels)
