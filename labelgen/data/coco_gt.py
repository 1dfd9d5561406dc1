"""COCO annotations of one image -> its tags and its GT shapes, broken parts named and skipped; and
the GT class-index mask rasterised from those shapes when a stage reads it.

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

The index checks the annotations (`check_coco`) without drawing them: a shape's pixels are needed only
for an annotation whose bbox is missing or outside the image, and then its run-length area suffices.
It keeps the usable shapes of each image, compact, in one GT file per index slice
(`write_gt_file`); a manifest row's `mask` refers to its entry as `<file>.cocogt.json#<n>`, and
`read_gt` rasterises it on demand (`labelgen.data.masks.gt_mask` is how stages read GT).
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from labelgen.data.masks import IGNORE_INDEX
from labelgen.data.problems import NOT_SCORED, PARTS_SKIPPED
from labelgen.errors import DataError


@dataclass
class CocoGt:
    tags: tuple[int, ...]  # labels of the annotations that are in the image
    complete: bool  # False when an annotation had no usable shape: a mask would miss an object
    # the usable shapes in annotation order, each {"label", "crowd", "area" (or None), and "polygons"
    # (lists of x, y coordinates) or "rle" (a COCO RLE of the image's size)}: what `rasterise` draws
    shapes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (reason, action): one per broken annotation


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_NUMBER_TYPES = {int, float}


def _numbers(values: Any) -> bool:
    """Whether `values` is a list of finite numbers (not booleans); C-level loops, as this runs on
    every coordinate of every polygon of a data set."""
    if not isinstance(values, list) or not set(map(type, values)) <= _NUMBER_TYPES:
        return False
    try:
        return all(map(math.isfinite, values))
    except OverflowError:  # an integer too large for a float
        return False


def _polygons(seg: list, faults: list[str]) -> list[list[float]]:
    """The usable polygons of a COCO polygon list: ≥ 3 points, an even count of finite numbers.
    A fault shared by several polygons is one phrase naming them all (an annotation of 50 broken
    polygons is one short line, not 50)."""
    usable, broken = [], {}
    for k, poly in enumerate(seg):
        if not _numbers(poly):
            broken.setdefault("is not a list of numbers", []).append(k)
        elif len(poly) % 2:
            broken.setdefault(f"has an odd count of coordinates ({len(poly)})", []).append(k)
        elif len(poly) < 6:
            broken.setdefault(f"has {len(poly) // 2} point(s), a polygon needs 3", []).append(k)
        else:
            usable.append(list(map(float, poly)))
    for why, ks in broken.items():
        faults.append(f"polygon {ks[0]} {why}" if len(ks) == 1 else f"polygons {_few(ks)}: each {_shorter(why)}")
    if not seg:
        faults.append("empty segmentation")
    return usable


def _shorter(why: str) -> str:
    """A fault's words where several polygons share it (the line names them all, so it is kept short)."""
    return why.replace(", a polygon needs 3", "").replace("an odd count of coordinates", "an odd coordinate count")


def _few(numbers: list, shown: int = 3) -> str:
    """`0, 3` or `0, 3, 7 and 45 more`: a list of indices (or ids) kept short in one problem line."""
    head = ", ".join(map(str, numbers[:shown]))
    return head + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")


def rle_run_total(counts: str) -> int | None:
    """The pixel count a compressed COCO RLE string describes (the sum of its runs), or None when it
    is not a valid run-length string (a run below zero, a character outside COCO's alphabet).

    Decoded as pycocotools' `rleFrString`: 5 bits per character (offset 48), bit 0x20 = more to
    come, bit 0x10 of the last = negative; from the third run on, each value is a difference to
    the run two before. pycocotools itself does not check the total: runs that add up to less than
    height × width leave the mask's tail uninitialised."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return sum(runs)


def _rle_fault(seg: dict, height: int, width: int) -> str | None:
    """What makes a COCO RLE unusable for a height × width image, or None."""
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and list(size) == [height, width]):
        return f"RLE size {size} is not the image's [height, width] [{height}, {width}]"
    counts = seg.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            return "uncompressed RLE counts are not all whole numbers ≥ 0"
        total, kind = sum(counts), "uncompressed"
    elif isinstance(counts, str):
        total, kind = rle_run_total(counts), "compressed"
        if total is None:
            return "compressed RLE counts are not a valid run-length string"
    else:
        return "RLE counts are neither a list nor a string"
    if total != height * width:
        # fewer: pycocotools leaves the rest of the mask holding whatever memory held before
        return f"{kind} RLE runs add up to {total} pixels, not {height}×{width} = {height * width}"
    return None


def _shape_rle(shape: dict[str, Any], height: int, width: int) -> dict:
    """The pycocotools RLE of a usable shape (polygons merged into one region)."""
    if "polygons" in shape:
        return coco_mask.merge(coco_mask.frPyObjects(shape["polygons"], height, width))
    rle = shape["rle"]
    if isinstance(rle["counts"], list):
        return coco_mask.frPyObjects(rle, height, width)
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii", "replace")}


def _usable_shape(ann: dict, height: int, width: int, faults: list[str]) -> dict[str, Any] | None:
    """{"polygons": ...} or {"rle": ...}: the usable part of one annotation's segmentation, or None
    when it has none. What is broken is appended to `faults`, one phrase each. Only a compressed RLE
    is decoded (to prove it decodes); polygons are checked without drawing them."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = _polygons(seg, faults)
        return {"polygons": polygons} if polygons else None
    if not isinstance(seg, dict):
        faults.append(f"segmentation is {type(seg).__name__}, not polygons or an RLE")
        return None
    fault = _rle_fault(seg, height, width)
    if fault:
        faults.append(fault)
        return None
    shape = {"rle": {"size": seg["size"], "counts": seg["counts"]}}
    try:
        coco_mask.decode(_shape_rle(shape, height, width))
    except Exception as e:  # pycocotools raises bare Exception/TypeError/ValueError for corrupt counts
        faults.append(f"RLE cannot be decoded ({type(e).__name__}: {e})")
        return None
    return shape


def _pixel_count(shape: dict[str, Any], height: int, width: int) -> int:
    """Pixels of a usable shape inside the image, from its run-length encoding (no H×W array)."""
    return int(coco_mask.area(_shape_rle(shape, height, width)))


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels

# A shape and its own bbox describe one object when their boxes, clipped to the image and each grown
# by BOX_SLACK pixels on every side (rounding: an exporter's bbox may be the pixel-grid extent of the
# polygon), overlap
# with an intersection over union of at least BOX_AGREEMENT. On coco128's 939 annotations the
# lowest is 0.97 (crowd RLEs); a polygon moved by half its size, or drawn in 0..1 normalised
# coordinates against a pixel bbox, is far below.
BOX_AGREEMENT = 0.5
BOX_SLACK = 1.0


def _bbox(ann: dict) -> Box | None:
    """The annotation's bbox [x, y, w, h] as a box, or None when it has none of positive size."""
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and _numbers(box)) or box[2] <= 0 or box[3] <= 0:
        return None
    x, y, w, h = box
    return x, y, x + w, y + h


def _overlaps_image(box: Box, height: int, width: int) -> bool:
    return box[0] < width and box[1] < height and box[2] > 0 and box[3] > 0


def _bbox_inside(ann: dict, height: int, width: int) -> bool:
    """Whether the annotation's bbox [x, y, w, h] overlaps the image with positive area (True if absent)."""
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and _numbers(box)):
        return True
    x, y, w, h = box
    return w > 0 and h > 0 and _overlaps_image((x, y, x + w, y + h), height, width)


def _extent(shape: dict[str, Any], height: int, width: int) -> Box:
    """The box a usable shape spans: its polygons' coordinates (in or out of the image), or its RLE's pixels."""
    if "polygons" in shape:
        xs = [v for poly in shape["polygons"] for v in poly[0::2]]
        ys = [v for poly in shape["polygons"] for v in poly[1::2]]
        return min(xs), min(ys), max(xs), max(ys)
    x, y, w, h = (float(v) for v in coco_mask.toBbox(_shape_rle(shape, height, width)))
    return x, y, x + w, y + h


def _clip(box: Box, height: int, width: int) -> Box | None:
    """The part of a box inside the image, or None when it has none."""
    x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def boxes_agree(a: Box, b: Box, height: int, width: int) -> bool:
    """Whether a shape's extent and its bbox describe one object in a height × width image: their parts
    inside the image, each grown by BOX_SLACK, overlap with an IoU ≥ BOX_AGREEMENT (a shape running
    past the border with its bbox clipped to the image agrees). One in the image and the other not:
    they disagree; neither in it: nothing to compare (the shape has no pixel there)."""
    a, b = _clip(a, height, width), _clip(b, height, width)
    if a is None or b is None:
        return a is None and b is None
    a = (a[0] - BOX_SLACK, a[1] - BOX_SLACK, a[2] + BOX_SLACK, a[3] + BOX_SLACK)
    b = (b[0] - BOX_SLACK, b[1] - BOX_SLACK, b[2] + BOX_SLACK, b[3] + BOX_SLACK)
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter >= BOX_AGREEMENT * union


def _box_text(box: Box) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in box) + "]"


def check_coco(annotations: tuple[dict, ...], height: int, width: int) -> CocoGt:
    """Tags and usable shapes of one image's annotations (each with `label` and `name` added by the
    lister) on a height × width image, with a note for each broken annotation.

    Every shape must fit its image: its RLE the image's size and pixel count, its extent its own
    bbox where one is given (`boxes_agree`). A shape that does not is not drawn; the tag stays
    when the bbox or the shape lies in the image, and the image's GT is not scored."""
    tags, notes, shapes, shapeless = set(), [], [], []
    for ann in annotations:
        name = f"annotation {ann.get('id', '?')} ({ann['name']})"
        faults: list[str] = []
        shape = _usable_shape(ann, height, width, faults)
        box = _bbox(ann)
        extent = _extent(shape, height, width) if shape is not None and box is not None else None
        if extent is not None and not boxes_agree(extent, box, height, width):
            faults.append(
                f"its shape spans x0,y0,x1,y1 {_box_text(extent)} but its bbox {_box_text(box)}: they do not "
                "describe one object (shifted or normalised coordinates?)"
            )
            shape = None
            in_image = _overlaps_image(box, height, width) or _overlaps_image(extent, height, width)
        elif shape is None:
            in_image = _bbox_inside(ann, height, width)
        else:
            in_image = True
        if shape is None:
            if in_image:  # the annotator said the object is here: it trains, but the GT would miss it
                tags.add(ann["label"])
                shapeless.append(str(ann.get("id", "?")))
                faults.append("no usable shape left: tag kept; re-export it to score the image")
            else:
                faults.append(f"no usable shape and its bbox {ann.get('bbox')} is outside the image: skipped")
        # a bbox in the image keeps the annotation whatever its pixels: only without one are they counted
        elif not (box is not None and _overlaps_image(box, height, width)) and not _pixel_count(shape, height, width):
            faults.append(f"no pixel inside the {width}×{height} image: skipped")
            shape = None
        if faults:
            broken = "; ".join(faults)
            notes.append(
                (f"{name}: {broken}" + ("; the other shapes are used" if shape is not None else ""), PARTS_SKIPPED)
            )
        if shape is None:
            continue
        # (a shape smaller than a pixel inside its bbox is a tiny object: COCO has them; its tag stays)
        tags.add(ann["label"])
        area = ann.get("area")
        shapes.append(
            {"label": ann["label"], "crowd": bool(ann.get("iscrowd")), "area": area if _number(area) else None, **shape}
        )
    if shapeless:
        notes.append((f"GT mask misses objects that have no usable shape (annotations {_few(shapeless)})", NOT_SCORED))
    return CocoGt(tuple(sorted(tags)), not shapeless, shapes, notes)


def rasterise(shapes: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """The height × width uint8 class-index mask of an image's usable shapes (`CocoGt.shapes`).
    Larger objects are drawn first so smaller ones stay visible (size: the annotation's `area`, else
    its pixel count); crowd regions become ignore (255) where no single object covers them."""
    mask = np.zeros((height, width), np.uint8)
    crowd = np.zeros((height, width), bool)
    rles = [_shape_rle(s, height, width) for s in shapes]
    sizes = [s["area"] if s["area"] is not None else int(coco_mask.area(r)) for s, r in zip(shapes, rles, strict=True)]
    for k in sorted(range(len(shapes)), key=lambda k: -sizes[k]):  # stable: equal sizes keep file order
        region = coco_mask.decode(rles[k]).astype(bool)
        if shapes[k]["crowd"]:
            crowd |= region
        else:
            mask[region] = shapes[k]["label"]
    mask[crowd & (mask == 0)] = IGNORE_INDEX
    return mask


# ------------------------------------------------------------------------------------- GT files
GT_SUFFIX = ".cocogt.json"
_REFERENCE = re.compile(r"(.+" + re.escape(GT_SUFFIX) + r")#(\d+)")


def gt_reference(file: Path, n: int) -> str:
    """What a manifest row's `mask` holds for COCO GT: entry `n` of the GT file `file` (an absolute path)."""
    return f"{file}#{n}"


def is_gt_reference(mask: Path | str) -> bool:
    return _REFERENCE.fullmatch(str(mask)) is not None


def write_gt_file(path: Path, entries: dict[int, tuple[int, int, list[dict[str, Any]]]]) -> None:
    """One index slice's GT: {n: (height, width, usable shapes)} as JSON, one entry a line."""
    lines = [json.dumps(str(n)) + ": " + json.dumps(list(e), separators=(",", ":")) for n, e in entries.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


@functools.lru_cache(maxsize=4)
def _gt_file(path: str, stamp: tuple[int, int]) -> dict[str, list]:
    """A parsed GT file; the cache serves the next rows of the same slice (`stamp`: its mtime and size,
    so a rewritten file is read anew)."""
    return json.loads(Path(path).read_text())


def read_gt(reference: str) -> np.ndarray:
    """The H×W uint8 class-index GT mask a `gt_reference` names, rasterised from its shapes.
    Raises `DataError` when the GT file or its entry is missing or unreadable."""
    match = _REFERENCE.fullmatch(str(reference))
    if match is None:
        raise DataError(f"{reference}: not a COCO GT reference (<file>{GT_SUFFIX}#<n>)")
    path, n = match.groups()
    try:
        stat = Path(path).stat()
        height, width, shapes = _gt_file(path, (stat.st_mtime_ns, stat.st_size))[n]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(
            f"{reference}: COCO GT not readable ({type(e).__name__}: {e}); re-create the index "
            "(`labelgen run index --force index` or `labelgen data index`)"
        ) from e
    return rasterise(shapes, height, width)
