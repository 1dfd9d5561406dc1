"""Pure numerics that turn CAMs into labels (weaktr-method.md §1.7–§1.8)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners False) resize of (k, h, w) maps to (k, *size)."""
    if maps.shape[1:] == tuple(size):
        return maps
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].numpy()


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
