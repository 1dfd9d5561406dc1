"""Ultralytics instance segmentation (`YOLODataset`, task `segment`): `labels/<split>/<id>.txt` beside
`images/<split>/`, one line per object, `<class> x1 y1 x2 y2 ...` (normalised to 0..1), and
`data.yaml` with `names` 0..C-1 = labelgen's labels 1..C (background is no class here).

Objects: each 8-connected component of each foreground label is one object (labelgen's masks are
semantic: two touching dogs are one object). Its polygon is its outer border, traced by OpenCV
through the centres of its border pixels, with every hole joined in by a cut (the shortest segment
from the polygon to the hole's border, walked there and back), the way Ultralytics' own COCO
converter merges the parts of one object into one polygon. A point at pixel (x, y) is written as
((x + 0.5) / W, (y + 0.5) / H): the pixel's centre in the continuous frame the normalised
coordinates live in. Ultralytics rasterises a polygon by scaling it back and truncating to integers
before `cv2.fillPoly`, which also fills the border: so the polygons give back the component's pixels
(cut pixels lie on the object; measured: benchmarks/yolo_seg_agreement.py).

Components under `MIN_OBJECT_PIXELS` are dropped and counted. Ignore (255) has no counterpart in
YOLO labels; its pixels belong to no polygon, so Ultralytics trains on them as background.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from distributed import Client

from labelgen.data.masks import IGNORE_INDEX
from labelgen.formats.images import write_image, write_with_images
from labelgen.formats.source import ExportSource, Frame
from labelgen.formats.yolo import DATA_YAML, IMAGES, data_yaml_text, split_folder, yolo_roles
from labelgen.pipeline.stage import UnitResult
from labelgen.store.sharded import ImageArrays
from labelgen.store.workfolder import WorkFolder

log = logging.getLogger(__name__)

LABELS = "labels"
# Specks: Ultralytics trains instance masks at a quarter of the input size (mask_ratio 4; 160x160 at
# its default imgsz 640), so a region of under 4x4 pixels of a 640-pixel image covers less than one
# mask pixel; in pseudo-labels such regions are mostly CRF noise. Smaller components are dropped.
MIN_OBJECT_PIXELS = 16
DECIMALS = 6  # coordinates to 1e-6 of the image side: below 0.01 pixel for sides up to 10,000 pixels


@dataclass(frozen=True)
class Objects:
    """The objects of one mask: (label 1..C, polygon as a K×2 int32 array of pixel (x, y), K >= 3) per
    kept component; dropped specks and their pixels; holes joined in by cuts."""

    polygons: list[tuple[int, np.ndarray]]
    specks: int
    speck_pixels: int
    holes: int


def component_polygon(component: np.ndarray) -> tuple[np.ndarray, int]:
    """One 8-connected component (H×W uint8, 1 inside) as one polygon of pixel (x, y) points, its holes
    joined in by cuts; and its hole count. A component of >= 3 pixels gives >= 3 points."""
    padded = np.pad(component, 1)  # a border of zeros: borders at the edge of the crop are traced too
    contours, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parents = hierarchy[0][:, 3]
    (outer,) = (c.reshape(-1, 2) for c, p in zip(contours, parents, strict=True) if p < 0)
    if len(outer) < 3:  # a straight line of pixels: its two ends; trace every pixel, there and back
        contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        outer = contours[0].reshape(-1, 2)
    polygon = outer
    holes = [c.reshape(-1, 2) for c, p in zip(contours, parents, strict=True) if p >= 0]  # a line has none
    for hole in holes:
        distance = ((polygon[:, None, :].astype(np.int64) - hole[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(distance.argmin()), distance.shape)
        # walk the polygon to point i, cut to the hole's point j, round the hole back to j, cut back to i
        polygon = np.concatenate([polygon[: i + 1], hole[j:], hole[: j + 1], polygon[i:]])
    return (polygon - 1).astype(np.int32), len(holes)


def mask_objects(mask: np.ndarray, min_pixels: int = MIN_OBJECT_PIXELS) -> Objects:
    """The objects of an H×W uint8 label mask (0 background, 1..C classes, 255 ignore): one polygon per
    8-connected component of each class with >= `min_pixels` pixels (>= 3), in label order."""
    polygons, specks, speck_pixels, holes = [], 0, 0, 0
    for label in np.unique(mask):
        if label in (0, IGNORE_INDEX):
            continue
        count, components, stats, _ = cv2.connectedComponentsWithStats((mask == label).view(np.uint8), connectivity=8)
        for c in range(1, count):
            x, y, w, h, area = stats[c]
            if area < min_pixels:
                specks += 1
                speck_pixels += int(area)
                continue
            crop = (components[y : y + h, x : x + w] == c).view(np.uint8)
            polygon, n = component_polygon(crop)
            polygons.append((int(label), polygon + np.array([x, y], dtype=np.int32)))
            holes += n
    return Objects(polygons, specks, speck_pixels, holes)


def polygon_line(label: int, polygon: np.ndarray, height: int, width: int) -> str:
    """A YOLO segment line: class (label - 1) and the pixel centres normalised by the image size."""
    points = (polygon + 0.5) / np.array([width, height])
    return f"{label - 1} " + " ".join(f"{v:.{DECIMALS}f}" for v in points.ravel())


def _yolo_seg_task(
    store: Path, rows: range, frames: dict[str, Frame], label_dir: Path, image_dir: Path, fmt: str, max_pixels: int
) -> UnitResult:
    """Write one shard's label files (an empty file for an image without objects) and images; return
    them and the counts of images copied and re-encoded (by reason), objects, dropped specks and their
    pixels, holes, images without objects."""
    arrays = ImageArrays(store)
    counts: Counter[str] = Counter()
    files = []
    for i, mask in zip(rows, arrays.rows(rows.start, rows.stop), strict=True):
        image_id = arrays.ids[i]
        found = mask_objects(mask)
        lines = [polygon_line(label, polygon, *mask.shape) for label, polygon in found.polygons]
        files.append(label_dir / f"{image_id}.txt")
        files[-1].write_text("".join(f"{line}\n" for line in lines))
        counts.update(
            objects=len(lines), specks=found.specks, speck_pixels=found.speck_pixels, holes=found.holes, empty=not lines
        )
        counts[write_image(frames[image_id], image_dir, image_id, fmt, max_pixels)] += 1
        files.append(image_dir / f"{image_id}.{fmt}")
    return files, {"written": dict(counts)}


def export_yolo_seg(source: ExportSource, what: str, folder: WorkFolder, client: Client, choice: str) -> dict[str, int]:
    """Ultralytics' instance-segmentation layout: `images/<split>/<id>.<fmt>`, `labels/<split>/<id>.txt`
    (polygons) and `data.yaml` with `names` 0..C-1 (labelgen's labels 1..C)."""
    out = folder.path
    labels, images = split_folder(out, LABELS), split_folder(out, IMAGES)
    _, counts = write_with_images(source, what, folder, labels, images, choice, client, _yolo_seg_task)
    for split, c in counts.items():
        log.info(
            "export: split %s: %d objects (%d holes joined by cuts), %d images without objects; %d specks "
            "under %d pixels dropped (%d pixels)",
            split,
            c["objects"],
            c["holes"],
            c["empty"],
            c["specks"],
            MIN_OBJECT_PIXELS,
            c["speck_pixels"],
        )
        if not c["objects"]:
            log.warning(
                "export: split %s holds no object (every label file in %s is empty); Ultralytics warns "
                "'Labels are missing or empty' and has nothing to train on",
                split,
                labels(split),
            )
    header = [
        "Ultralytics instance-segmentation data set, written by `labelgen export --format yolo-seg`.",
        "labels/<split>/<id>.txt: one polygon per connected region of a class; class id = labelgen label - 1 "
        f"(background is no class). Train: yolo segment train data={out / DATA_YAML} model=yolo11n-seg.yaml",
    ]
    text = data_yaml_text(out, yolo_roles(source), list(source.manifest.classes[1:]), header, {})
    (out / DATA_YAML).write_text(text)
    log.info("export: Ultralytics data YAML (task segment) -> %s", out / DATA_YAML)
    return {split: c["images"] for split, c in counts.items()}
