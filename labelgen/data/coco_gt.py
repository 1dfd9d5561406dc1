"""COCO annotations of one image -> its tags and GT class-index mask, broken parts named and skipped.

COCO-format files from annotation tools carry shapes pycocotools cannot rasterise (a "polygon" of two
points, an odd coordinate count, an RLE whose size is not the image's, a shape wholly outside the
image). Each annotation is checked before pycocotools sees it; what cannot be used is skipped with a
note naming the annotation id, and the image keeps everything else:
- a polygon with < 3 points, or an odd or non-numeric coordinate list: that polygon is skipped;
- no usable shape left (empty list, an RLE of the wrong size or undecodable): the tag stays (the
  annotator said the object is there, unless its bbox lies outside the image), but the GT mask misses
  the object, so the image's GT is not scored;
- a usable shape with no pixel inside the image (and a bbox outside it, or none): the annotation is
  skipped, tag included (nothing of it is in the image);
- an unknown category id: the annotation is skipped (noted when the file is listed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from labelgen.data.masks import IGNORE_INDEX


@dataclass
class CocoGt:
    mask: np.ndarray  # H×W uint8 class indices; crowd-only regions 255
    tags: tuple[int, ...]  # labels of the annotations that are in the image
    complete: bool  # False when an annotation had no usable shape: the mask misses an object
    notes: list[str] = field(default_factory=list)  # one line per skipped part, naming the annotation id


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _polygons(seg: list, name: str, notes: list[str]) -> list[list[float]]:
    """The usable polygons of a COCO polygon list: ≥ 3 points, an even count of finite numbers."""
    usable = []
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or not all(_number(v) for v in poly):
            notes.append(f"{name}: polygon {k} is not a list of numbers; skipped")
        elif len(poly) % 2:
            notes.append(f"{name}: polygon {k} has an odd count of coordinates ({len(poly)}); skipped")
        elif len(poly) < 6:
            notes.append(f"{name}: polygon {k} has {len(poly) // 2} point(s), a polygon needs 3; skipped")
        else:
            usable.append([float(v) for v in poly])
    return usable


def _rle(seg: dict, height: int, width: int, name: str, notes: list[str]) -> dict | None:
    """A compressed RLE of the image's size, or None with a note."""
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and list(size) == [height, width]):
        notes.append(f"{name}: RLE size {size} is not the image's [height, width] [{height}, {width}]")
        return None
    counts = seg.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            notes.append(f"{name}: uncompressed RLE counts do not add up to {height}×{width} pixels")
            return None
        return coco_mask.frPyObjects(seg, height, width)
    if isinstance(counts, str):
        return {"size": size, "counts": counts.encode("ascii", "replace")}
    if isinstance(counts, bytes):
        return seg
    notes.append(f"{name}: RLE counts are neither a list nor a string")
    return None


def annotation_region(ann: dict, height: int, width: int, notes: list[str]) -> np.ndarray | None:
    """The H×W bool region of one annotation, or None when it has no usable shape (with notes)."""
    name = f"annotation {ann.get('id', '?')} ({ann['name']})"
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = _polygons(seg, name, notes)
        if not polygons:
            notes.append(f"{name}: no usable polygon")
            return None
        rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    elif isinstance(seg, dict):
        rle = _rle(seg, height, width, name, notes)
        if rle is None:
            return None
    else:
        notes.append(f"{name}: segmentation is {type(seg).__name__}, not polygons or an RLE")
        return None
    try:
        return coco_mask.decode(rle).astype(bool)
    except Exception as e:  # pycocotools raises bare Exception/TypeError/ValueError for corrupt counts
        notes.append(f"{name}: RLE cannot be decoded ({type(e).__name__}: {e})")
        return None


def _bbox_inside(ann: dict, height: int, width: int) -> bool:
    """Whether the annotation's bbox [x, y, w, h] overlaps the image with positive area (True if absent)."""
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
        return True
    x, y, w, h = box
    return w > 0 and h > 0 and x < width and y < height and x + w > 0 and y + h > 0


def rasterise_coco(annotations: tuple[dict, ...], height: int, width: int) -> CocoGt:
    """Tags and class-index mask (height × width) of one image's annotations (each with `label` and
    `name` added by the lister). Larger objects are drawn first so smaller ones stay visible; crowd
    regions become ignore (255) where no single object covers them."""
    mask = np.zeros((height, width), np.uint8)
    crowd = np.zeros((height, width), bool)
    tags, complete, notes = set(), True, []
    regions = []
    for ann in annotations:
        region = annotation_region(ann, height, width, notes)
        name = f"annotation {ann.get('id', '?')} ({ann['name']})"
        if region is None:
            if _bbox_inside(ann, height, width):
                tags.add(ann["label"])
                complete = False
                notes.append(f"{name}: tag kept; the GT mask lacks this object, so the image's GT is not scored")
            else:
                notes.append(f"{name}: no usable shape and its bbox {ann.get('bbox')} is outside the image; skipped")
            continue
        pixels = int(region.sum())
        if pixels == 0 and not (ann.get("bbox") and _bbox_inside(ann, height, width)):
            notes.append(f"{name}: no pixel inside the {width}×{height} image; skipped")
            continue
        # (a shape smaller than a pixel inside its bbox is a tiny object: COCO has them; its tag stays)
        tags.add(ann["label"])
        area = ann.get("area")
        regions.append((area if _number(area) else pixels, ann, region))
    for _, ann, region in sorted(regions, key=lambda r: -r[0]):
        if ann.get("iscrowd"):
            crowd |= region
        else:
            mask[region] = ann["label"]
    mask[crowd & (mask == 0)] = IGNORE_INDEX
    return CocoGt(mask, tuple(sorted(tags)), complete, notes)
