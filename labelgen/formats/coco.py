"""COCO JSON: per split a dataset file (images, categories, annotations with compressed RLE) and a
results list for `COCO.loadRes` / `COCOeval`.

Ids: the COCO files keep the source's ids (`ImageRecord.source_id`, `Manifest.category_id`), so
they evaluate against the original instances JSON; see `coco_image_ids` for data sets without them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client
from pycocotools import mask as coco_mask

from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.data.masks import IGNORE_INDEX
from labelgen.formats.source import ExportSource, Frame, export_units, other_frame_count, warn_other_frame
from labelgen.pipeline.executor import run_units
from labelgen.store.sharded import ImageArrays
from labelgen.store.workfolder import WorkFolder

log = logging.getLogger(__name__)

# COCO results need a score; pseudo-masks carry no confidence, so every region gets the same one
# (COCOeval then ranks them in file order, and AP measures the masks' overlap alone).
RESULT_SCORE = 1.0


def coco_image_ids(records: list[ImageRecord]) -> tuple[dict[str, int], str]:
    """COCO integer image ids for the rows of one split, and the rule used: the source's ids where
    every row has one (COCO `images[].id`), else the numeric file stems where all are numbers and
    distinct (COCO-2017-style names), else 1..N in manifest order."""
    if all(r.source_id is not None for r in records) and len({r.source_id for r in records}) == len(records):
        return {r.id: int(r.source_id) for r in records}, "source ids"
    if all(r.id.isdigit() for r in records) and len({int(r.id) for r in records}) == len(records):
        return {r.id: int(r.id) for r in records}, "numeric file stems"
    return {r.id: n for n, r in enumerate(records, 1)}, "1..N in manifest order"


def coco_categories(manifest: Manifest) -> list[dict[str, Any]]:
    """One COCO category per foreground label that has a source id: {id: source category id, name}
    (id 0 included: tools that number from 0 keep their ids). Labels of no category (the unused ids
    of an "original" label space) are left out."""
    return [
        {"id": manifest.category_id(k), "name": name}
        for k, name in enumerate(manifest.classes)
        if k > 0 and manifest.category_id(k) is not None
    ]


def _coco_task(
    store: Path, rows: range, frames: dict[str, Frame], image_ids: dict[str, int], category_ids: list[int], part: Path
) -> tuple[list[Path], dict[str, int]]:
    """One compressed RLE per (image, foreground category present), ignore (255) left out, written to
    the JSON list `part`; returns it, with how many of the shard's images EXIF-applying readers
    decode in another frame."""
    arrays = ImageArrays(store)
    regions = []
    for i, mask in zip(rows, arrays.rows(rows.start, rows.stop), strict=True):
        for label in np.unique(mask):
            if label in (0, IGNORE_INDEX):
                continue
            rle = coco_mask.encode(np.asfortranarray((mask == label).astype(np.uint8)))
            regions.append(
                {
                    "image_id": image_ids[arrays.ids[i]],
                    "category_id": category_ids[label],
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "area": float(coco_mask.area(rle)),
                    "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                }
            )
    part.write_text(json.dumps(regions))
    return [part], {"other_frame": other_frame_count(frames)}


def coco_results(regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The regions as a COCO results list for `COCO.loadRes` and `COCOeval(iouType="segm")`:
    image_id, category_id, segmentation (compressed RLE), score. No bbox: with one, loadRes would
    take the box's area as the region's area, and COCOeval's small/medium/large split with it."""
    return [{k: r[k] for k in ("image_id", "category_id", "segmentation")} | {"score": RESULT_SCORE} for r in regions]


def coco_file_name(record: ImageRecord, image_root: Path | None) -> str:
    """The image's `file_name`: its path under `image_root` (`/`-separated), or with no root its
    name in its source's image folder, id (the file stem) and suffix (the manifest keeps a
    symlinked file's own name, so this is the name the source JSON used)."""
    path = Path(record.image)
    if image_root is not None and path.is_relative_to(image_root):
        return path.relative_to(image_root).as_posix()
    return f"{record.id}{path.suffix}"


def coco_dataset(
    records: list[ImageRecord], image_ids: dict[str, int], manifest: Manifest, regions: list, image_root: Path | None
) -> dict:
    """The regions as a COCO instances dataset (images, categories, annotations with iscrowd 0), for
    `COCO(path)` and tools that train on COCO files; width/height are labelgen's frame."""
    images = [
        {"id": image_ids[r.id], "file_name": coco_file_name(r, image_root), "width": r.width, "height": r.height}
        for r in records
    ]
    annotations = [r | {"id": n, "iscrowd": 0} for n, r in enumerate(regions, 1)]
    return {"images": images, "categories": coco_categories(manifest), "annotations": annotations}


def export_coco(source: ExportSource, what: str, folder: WorkFolder, client: Client) -> dict[str, int]:
    """Per split `<what>_<split>.json` (dataset) and `<what>_<split>_results.json` (results list). Each
    shard's regions go to a part file under the folder's `.labelgen/`, joined once all are done."""
    out, manifest = folder.path, source.manifest
    category_ids = [manifest.category_id(k) for k in range(manifest.num_labels)]
    records_of = {split: source.records(split) for split in source.stores}
    ids = {split: coco_image_ids(records) for split, records in records_of.items()}

    def extra(split: str, shard: int, rows: range) -> tuple:
        shard_ids = {r.id: ids[split][0][r.id] for r in records_of[split][rows.start : rows.stop]}
        return shard_ids, category_ids, folder.scratch / f"coco_{split}_{shard:06d}.json"

    units = export_units(source, _coco_task, extra)
    done = run_units(folder, [u for _, u in units], client, "export")
    counts, other = {}, sum(r["other_frame"] for r in done)
    for split, records in records_of.items():
        image_ids, rule = ids[split]
        regions = [a for s, u in units if s == split for a in json.loads(u.args[-1].read_text())]
        dataset_file, results_file = out / f"{what}_{split}.json", out / f"{what}_{split}_results.json"
        dataset_file.write_text(json.dumps(coco_dataset(records, image_ids, manifest, regions, source.image_root)))
        results_file.write_text(json.dumps(coco_results(regions)))
        counts[split] = len(records)
        log.info(
            "export: %d %s masks of split %s as %d COCO regions (image ids: %s; file_name relative to %s) -> %s "
            "(dataset), %s (results)",
            len(records),
            what,
            split,
            len(regions),
            rule,
            source.image_root or "the source's image folder",
            dataset_file,
            results_file,
        )
        if not regions:
            log.warning("export: %s holds no regions; pycocotools' loadRes refuses an empty list", results_file)
    warn_other_frame(other, "coco", out)
    return counts
