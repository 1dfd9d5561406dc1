"""Validation of source items into manifest rows: the work of one `index` task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from labelgen.data.images import inspect_image
from labelgen.data.manifest import ImageRecord
from labelgen.data.masks import IGNORE_INDEX, check_mask, read_mask, tags_from_mask, write_mask
from labelgen.data.sources import SourceItem, problem
from labelgen.errors import DataError
from labelgen.store.artifact import file_digest


def rasterise_coco(annotations: tuple[dict, ...], height: int, width: int) -> np.ndarray:
    """A class-index mask from COCO annotations: larger objects first so smaller ones stay visible;
    crowd regions become ignore (255) where no single object covers them."""
    mask = np.zeros((height, width), np.uint8)
    crowd = np.zeros((height, width), bool)
    for ann in sorted(annotations, key=lambda a: -a["area"]):
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons
            rle = coco_mask.merge(coco_mask.frPyObjects(seg, height, width)) if seg else None
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE (crowd)
            rle = coco_mask.frPyObjects(seg, height, width)
        else:
            rle = seg
        if rle is None:
            continue
        region = coco_mask.decode(rle).astype(bool)
        if ann["iscrowd"]:
            crowd |= region
        else:
            mask[region] = ann["label"]
    mask[crowd & (mask == 0)] = IGNORE_INDEX
    return mask


def index_items(
    items: list[SourceItem], num_classes: int, max_pixels: int, gt_dir: Path
) -> tuple[list[ImageRecord], list[dict[str, str]]]:
    """Validate each item; return manifest rows for the good ones and a problem for each bad one."""
    records, problems = [], []
    for item in items:
        try:
            record, converted = _index_one(item, num_classes, max_pixels, gt_dir)
        except DataError as e:
            problems.append(problem(item.image, str(e)))
            continue
        if converted:
            problems.append(problem(item.image, converted, "converted when read"))
        if not record.tags:
            problems.append(problem(item.image, "no image-level tags; WeakTr needs at least one class per image"))
            continue
        records.append(record)
    return records, problems


def _index_one(item: SourceItem, num_classes: int, max_pixels: int, gt_dir: Path) -> tuple[ImageRecord, str | None]:
    info = inspect_image(item.image, max_pixels)
    size = (info.width, info.height)
    mask_path = item.mask
    if item.coco_annotations is not None:
        mask_path = gt_dir / f"{item.id}.png"
        write_mask(mask_path, rasterise_coco(item.coco_annotations, info.height, info.width))
    tags = item.tags
    if mask_path is not None:
        mask = read_mask(mask_path)
        check_mask(mask, num_classes, mask_path, size)
        if tags is None:
            tags = tags_from_mask(mask)
    if tags is None:
        raise DataError(f"{item.image}: no tags and no mask to read them from")
    bad = [t for t in tags if not 0 < t < num_classes]
    if bad:
        raise DataError(f"{item.image}: tags {bad} outside the label space 1..{num_classes - 1}")
    record = ImageRecord(
        id=item.id,
        image=str(Path(item.image).resolve()),
        width=info.width,
        height=info.height,
        tags=tuple(tags),
        mask=str(Path(mask_path).resolve()) if mask_path is not None else None,
        split=item.split,
        sha256=file_digest(Path(item.image)),
        source_id=item.source_id,
    )
    return record, info.converted
