"""Dense CRF (pydensecrf) on label maps and on probabilities, with the reference's settings
(weaktr-method.md §2). The RGB image is always the original full-resolution uint8 image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax


@dataclass(frozen=True)
class CrfParams:
    gauss_sxy: float
    gauss_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    iterations: int

    @classmethod
    def of(cls, params) -> CrfParams:
        """From a stage's params, which name these settings `crf_*`."""
        return cls(
            params.crf_gauss_sxy,
            params.crf_gauss_compat,
            params.crf_bilateral_sxy,
            params.crf_bilateral_srgb,
            params.crf_bilateral_compat,
            params.crf_iterations,
        )


def _infer(image: np.ndarray, unary: np.ndarray, n_labels: int, p: CrfParams) -> np.ndarray:
    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary))
    d.addPairwiseGaussian(sxy=p.gauss_sxy, compat=p.gauss_compat)
    d.addPairwiseBilateral(
        sxy=p.bilateral_sxy,
        srgb=p.bilateral_srgb,
        rgbim=np.require(image, np.uint8, ["C", "W"]),
        compat=p.bilateral_compat,
    )
    q = np.array(d.inference(p.iterations)).reshape(n_labels, h, w)
    return q


def crf_on_labels(image: np.ndarray, index_map: np.ndarray, n_labels: int, p: CrfParams, gt_prob: float) -> np.ndarray:
    """Refine an H×W index map (values 0..n_labels-1) with a label unary; returns the new index map."""
    if n_labels < 2:
        return index_map
    unary = unary_from_labels(index_map.reshape(-1).astype(np.int32), n_labels, gt_prob=gt_prob, zero_unsure=False)
    return _infer(image, unary, n_labels, p).argmax(axis=0)


def crf_on_probs(image: np.ndarray, probs: np.ndarray, p: CrfParams) -> np.ndarray:
    """Refine (n, H, W) probabilities with a softmax unary; returns the refined (n, H, W) marginals."""
    if probs.shape[0] < 2:
        return probs
    unary = unary_from_softmax(np.clip(probs, 1e-8, 1.0).astype(np.float32))
    return _infer(image, unary, probs.shape[0], p)
