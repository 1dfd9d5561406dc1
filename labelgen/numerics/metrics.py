"""The one implementation of segmentation scores: a streaming confusion matrix and what follows
from it. CAMs, CRF pseudo-labels and predictions are all scored through here."""

from __future__ import annotations

import numpy as np

from labelgen.data.masks import IGNORE_INDEX
from labelgen.numerics.maps_to_labels import cam_to_labels

# train_cam's gt_miou selection grid: background thresholds 0.30, 0.31, ..., 0.60. The reference
# sweeps from 0.40 upward in steps of 0.01 until the first drop (weaktr-method.md §1.6,
# `evaluation.py:whole_eval`); this covers the same steps on both sides, without stopping early.
# evaluate's grid is its recipe setting `evaluate.sweep_thresholds`.
SELECTION_THRESHOLDS = tuple(np.round(np.arange(0.30, 0.61, 0.01), 2))


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """num_labels × num_labels counts, rows = GT label, columns = predicted label; GT 255 ignored."""
    if gt.shape != pred.shape:
        raise ValueError(f"GT shape {gt.shape} differs from prediction shape {pred.shape}")
    valid = gt != IGNORE_INDEX
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size and (g.max() >= num_labels or p.max() >= num_labels):
        raise ValueError(f"labels must be < {num_labels}; got GT max {g.max()}, prediction max {p.max()}")
    return np.bincount(g * num_labels + p, minlength=num_labels**2).reshape(num_labels, num_labels)


def cam_threshold_sweep(
    gt: np.ndarray, maps: np.ndarray, labels: np.ndarray, thresholds, num_labels: int
) -> np.ndarray:
    """(T, L, L) confusion matrices of one image's CAM label maps (`cam_to_labels`, no CRF) against
    its GT, one per background threshold; maps (k, H, W) at the GT's size, labels the k maps' labels."""
    return np.stack([confusion_matrix(gt, cam_to_labels(maps, labels, t), num_labels) for t in thresholds])


def scores(cm: np.ndarray) -> dict[str, object]:
    """mIoU (mean over classes that occur in GT or prediction), per-class IoU, precision, recall.

    A class with neither GT nor predicted pixels has IoU NaN and is left out of the mean (as the
    reference does for the 10 unused COCO ids); a predicted class absent from GT counts as IoU 0.
    """
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    gt_count = cm.sum(axis=1)
    pred_count = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt_count + pred_count - tp)
        precision = tp / pred_count
        recall = tp / gt_count
    total = cm.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "iou": iou.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "pixels": int(total),
    }


def image_miou(cm: np.ndarray) -> float | None:
    """mIoU of one image's confusion matrix (classes in its GT or prediction); None if it has no pixel."""
    miou = scores(cm)["miou"]
    return None if np.isnan(miou) else miou


def tag_agreement(cm: np.ndarray, tags: tuple[int, ...]) -> float:
    """How far two label maps of one image agree, in [0, 1], without GT (a WSSS proxy).

    `cm` is their confusion matrix (rows: the first map, e.g. the pseudo-label; columns: the second,
    e.g. the decoder's prediction). The mean IoU between them over background, the image's tags and
    every label either map holds, where a tagged class that neither map holds counts 0: two maps that
    both lost the object do not agree about it.
    """
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    labels = sorted({0, *tags, *np.flatnonzero(union > 0).tolist()})
    return float(np.mean([tp[c] / union[c] if union[c] else 0.0 for c in labels]))


def label_shares(mask: np.ndarray, num_labels: int) -> np.ndarray:
    """(num_labels,) float64: the share of a mask's scored pixels (not 255) holding each label; the
    shares of labels 1.. sum to the foreground share. All zero for a mask of only ignore."""
    counts = np.bincount(mask.ravel(), minlength=256)[:num_labels].astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts
