"""Quality without ground truth: what the masks of a run say about themselves, per image and per class.

Per image (a record from `image_quality`), for each label-mask source (pseudo-labels, predictions):
which tagged classes the mask holds at all ("found"), each tag's share of the scored pixels, the
foreground share, labels the mask holds that the tags do not name ("spurious"); the classifier's
confidence in each tag; and, on the train split, the agreement between pseudo-label and prediction
(`labelgen.numerics.metrics.tag_agreement`). Its GT-free score is that agreement where both masks exist, else
the share of its tags its final mask holds. Per class (`SplitTally`), the sums of these over a split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelgen.data.manifest import ImageRecord
from labelgen.numerics.metrics import label_shares, scores


def label_sources(labels: dict[str, Any]) -> list[str]:
    """The sources whose label maps a user takes away (pseudo-labels, predictions), in pipeline order;
    the CAM label map only where it is the run's sole source."""
    return [s for s in labels if s != "cams"] or list(labels)


def image_quality(
    record: ImageRecord,
    split: str,
    labels: dict[str, np.ndarray],
    num_labels: int,
    confidence: list[float] | None,
    gt_iou: dict[str, float | None],
) -> dict[str, Any]:
    """One image's record (JSON-able): its tags, per-source GT-free numbers, confidence per tag and
    mIoU against GT per source (`gt_iou`, empty when it has no GT). `labels`: source -> H×W uint8."""
    sources = label_sources(labels)
    out: dict[str, Any] = {
        "id": record.id,
        "split": split,
        "tags": list(record.tags),
        "gt": bool(gt_iou),
        "iou": gt_iou,
        "confidence": confidence,
        "final": sources[-1],
        "found": {},
        "share": {},
        "foreground": {},
        "spurious": {},
        "agreement": None,
    }
    for s in sources:
        shares = label_shares(labels[s], num_labels)
        out["found"][s] = [bool(shares[t] > 0) for t in record.tags]
        out["share"][s] = [float(shares[t]) for t in record.tags]
        out["foreground"][s] = float(shares[1:].sum())
        out["spurious"][s] = [int(c) for c in np.flatnonzero(shares[1:] > 0) + 1 if c not in record.tags]
    return out


def rank_key(record: dict[str, Any]) -> tuple[float, float]:
    """(GT-free score, rank score) of an image record, both in [0, 1], low = worse.

    GT-free score: for an image without tags (a negative), the share of its final mask that is
    background; else the pseudo-label/prediction agreement where both exist, else the share of the
    tags its final mask holds. (A negative's agreement is no score: its pseudo-label is all
    background, so a few stray predicted pixels add a class of IoU 0 and halve the mean.) Rank
    score: the final mask's mIoU against GT where the image has GT, else the GT-free score.
    """
    final = record["final"]
    if not record["tags"]:
        score = 1.0 - record["foreground"][final]
    elif record["agreement"] is not None:
        score = record["agreement"]
    else:
        score = float(np.mean(record["found"][final]))
    iou = record["iou"].get(record["final"]) if record["gt"] else None
    return score, (iou if iou is not None else score)


def mean_confidence(record: dict[str, Any]) -> float | None:
    conf = record["confidence"]
    return float(np.mean(conf)) if conf else None


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [float(n / d) if d else None for n, d in zip(num, den, strict=True)]


class SplitTally:
    """Per-class sums of the GT-free numbers over the image records of one split."""

    def __init__(self, num_labels: int):
        self.num_labels = num_labels
        self.images = 0
        self.tagged = np.zeros(num_labels, np.int64)
        self.tagged_images = 0  # images with at least one tag (the others are negatives)
        self.confidence = np.zeros(num_labels)
        self.confidence_images = 0
        self.low_confidence = 0  # images with a tag the classifier doubts (confidence < 0.5)
        self.agreement: list[float] = []
        self.sources: dict[str, dict[str, Any]] = {}

    def _source(self, name: str) -> dict[str, Any]:
        if name not in self.sources:
            n = self.num_labels
            self.sources[name] = {
                "found": np.zeros(n, np.int64),
                "share": np.zeros(n),
                "spurious": np.zeros(n, np.int64),
                "foreground": 0.0,
                "negative_foreground": 0.0,  # summed over the untagged images only
                "all_tags_found": 0,
            }
        return self.sources[name]

    def add(self, record: dict[str, Any]) -> None:
        tags = np.asarray(record["tags"], np.int64)  # typed: an untagged image (a negative) has none
        self.images += 1
        self.tagged_images += bool(len(tags))
        self.tagged[tags] += 1
        if record["confidence"] is not None:
            self.confidence[tags] += np.asarray(record["confidence"], np.float64)
            self.confidence_images += 1
            self.low_confidence += min(record["confidence"], default=1.0) < 0.5
        if record["agreement"] is not None:
            self.agreement.append(record["agreement"])
        for name, found in record["found"].items():
            s = self._source(name)
            s["found"][tags] += np.asarray(found, np.int64)
            s["share"][tags] += np.asarray(record["share"][name], np.float64)
            s["spurious"][np.asarray(record["spurious"][name], np.int64)] += 1
            s["foreground"] += record["foreground"][name]
            if not len(tags):
                s["negative_foreground"] += record["foreground"][name]
            s["all_tags_found"] += bool(found) and all(found)  # a negative has no tag to find

    def result(self, agreement_cm: np.ndarray | None) -> dict[str, Any]:
        """The split's GT-free metrics (metrics.json `gt_free.<split>`); lists are indexed by label,
        None where a class has no tagged image."""
        out: dict[str, Any] = {
            "images": self.images,
            "tagged_images": self.tagged_images,
            "tagged": self.tagged.tolist(),
            "confidence": _ratio(self.confidence, self.tagged) if self.confidence_images else None,
            # over every (image, tag) pair
            "mean_confidence": (
                float(self.confidence.sum() / self.tagged.sum())
                if self.confidence_images and self.tagged.sum()
                else None
            ),
            "images_with_confidence": self.confidence_images,
            "low_confidence_images": self.low_confidence,
            "sources": {},
        }
        for name, s in self.sources.items():
            out["sources"][name] = {
                "found": s["found"].tolist(),
                "found_share": _ratio(s["found"], self.tagged),
                "area_share": _ratio(s["share"], self.tagged),
                "spurious": s["spurious"].tolist(),
                "foreground": s["foreground"] / self.images if self.images else None,
                # the share of the negatives' pixels painted as some class (they hold none)
                "negative_foreground": (
                    s["negative_foreground"] / negatives if (negatives := self.images - self.tagged_images) else None
                ),
                "all_tags_found": s["all_tags_found"],
            }
        if agreement_cm is not None and self.agreement:
            agreement = scores(agreement_cm)
            out["agreement"] = {
                "miou": agreement["miou"],
                "iou": [None if np.isnan(v) else v for v in agreement["iou"]],
                "mean_image": float(np.mean(self.agreement)),
            }
        return out
