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
from labelgen.data.problems import NOT_SCORED, PARTS_SKIPPED


@dataclass
class CocoGt:
    mask: np.ndarray  # H×W uint8 class indices; crowd-only regions 255
    tags: tuple[int, ...]  # labels of the annotations that are in the image
    complete: bool  # False when an annotation had no usable shape: the mask misses an object
    notes: list[tuple[str, str]] = field(default_factory=list)  # (reason, action): one per broken annotation


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _polygons(seg: list, faults: list[str]) -> list[list[float]]:
    """The usable polygons of a COCO polygon list: ≥ 3 points, an even count of finite numbers."""
    usable = []
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or not all(_number(v) for v in poly):
            faults.append(f"polygon {k} is not a list of numbers")
        elif len(poly) % 2:
            faults.append(f"polygon {k} has an odd count of coordinates ({len(poly)})")
        elif len(poly) < 6:
            faults.append(f"polygon {k} has {len(poly) // 2} point(s), a polygon needs 3")
        else:
            usable.append([float(v) for v in poly])
    if not seg:
        faults.append("empty segmentation")
    return usable


def _rle(seg: dict, height: int, width: int, faults: list[str]) -> dict | None:
    """A compressed RLE of the image's size, or None with the fault."""
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and list(size) == [height, width]):
        faults.append(f"RLE size {size} is not the image's [height, width] [{height}, {width}]")
        return None
    counts = seg.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            faults.append(f"uncompressed RLE counts do not add up to {height}×{width} pixels")
            return None
        return coco_mask.frPyObjects(seg, height, width)
    if isinstance(counts, str):
        return {"size": size, "counts": counts.encode("ascii", "replace")}
    if isinstance(counts, bytes):
        return seg
    faults.append("RLE counts are neither a list nor a string")
    return None


def annotation_region(ann: dict, height: int, width: int, faults: list[str]) -> np.ndarray | None:
    """The H×W bool region of one annotation's usable shapes, or None when it has none. What is
    broken is appended to `faults`, one phrase each."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = _polygons(seg, faults)
        if not polygons:
            return None
        rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    elif isinstance(seg, dict):
        rle = _rle(seg, height, width, faults)
        if rle is None:
            return None
    else:
        faults.append(f"segmentation is {type(seg).__name__}, not polygons or an RLE")
        return None
    try:
        return coco_mask.decode(rle).astype(bool)
    except Exception as e:  # pycocotools raises bare Exception/TypeError/ValueError for corrupt counts
        faults.append(f"RLE cannot be decoded ({type(e).__name__}: {e})")
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
    tags, notes, regions, shapeless = set(), [], [], []
    for ann in annotations:
        name = f"annotation {ann.get('id', '?')} ({ann['name']})"
        faults: list[str] = []
        region = annotation_region(ann, height, width, faults)
        if region is None:
            if _bbox_inside(ann, height, width):
                tags.add(ann["label"])
                shapeless.append(str(ann.get("id", "?")))
                faults.append("no usable shape left: tag kept")
            else:
                faults.append(f"no usable shape and its bbox {ann.get('bbox')} is outside the image: skipped")
        elif not region.any() and not (ann.get("bbox") and _bbox_inside(ann, height, width)):
            faults.append(f"no pixel inside the {width}×{height} image: skipped")
            region = None
        if faults:
            broken = "; ".join(faults)
            notes.append(
                (f"{name}: {broken}" + ("; the other shapes are used" if region is not None else ""), PARTS_SKIPPED)
            )
        if region is None:
            continue
        # (a shape smaller than a pixel inside its bbox is a tiny object: COCO has them; its tag stays)
        tags.add(ann["label"])
        area = ann.get("area")
        regions.append((area if _number(area) else int(region.sum()), ann, region))
    for _, ann, region in sorted(regions, key=lambda r: -r[0]):
        if ann.get("iscrowd"):
            crowd |= region
        else:
            mask[region] = ann["label"]
    mask[crowd & (mask == 0)] = IGNORE_INDEX
    if shapeless:
        notes.append(
            (
                f"GT mask misses objects that have no usable shape (annotations {', '.join(shapeless)})",
                NOT_SCORED,
            )
        )
    return CocoGt(mask, tuple(sorted(tags)), not shapeless, notes)
