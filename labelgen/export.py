"""Export stored masks for other segmenters: VOC palette PNGs, the mmsegmentation folder layout, or a
COCO-style JSON with one compressed RLE per (image, category). One dask task per shard."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client
from pycocotools import mask as coco_mask

from labelgen.data.manifest import ImageRecord
from labelgen.data.masks import IGNORE_INDEX, write_mask
from labelgen.errors import ArtifactError, ConfigError
from labelgen.pipeline.runner import plan_run
from labelgen.stages.index import load_manifest
from labelgen.stages.pseudo_labels import MASKS
from labelgen.status import last_recipe
from labelgen.store.sharded import ImageArrays

log = logging.getLogger(__name__)

FORMATS = ("voc", "mmseg", "coco")
WHATS = {"pseudo_labels": "pseudo_labels", "predictions": "predict"}
SHARD = 64  # images per export task


def mask_stores(run_dir: Path, what: str) -> tuple[dict[str, Path], dict[str, ImageRecord], tuple[str, ...]]:
    """The finished mask stores of a run ({split: store}), its manifest rows by id, and its classes."""
    if what not in WHATS:
        raise ConfigError(f"--what {what!r}; allowed: {', '.join(WHATS)}")
    recipe, _ = last_recipe(run_dir)
    plan = {p.stage.name: p.artifact for p in plan_run(recipe, run_dir, "full")}
    art = plan[WHATS[what]]
    if not art.is_complete():
        raise ArtifactError(
            f"{WHATS[what]} of {run_dir} is not finished ({art.path}); run `labelgen run {WHATS[what]}` first"
        )
    manifest = load_manifest(plan["index"])
    if what == "pseudo_labels":
        stores = {recipe["dataset"].train_split: art.path / MASKS}
    else:
        stores = {s.stem.removeprefix("masks_"): s for s in sorted(art.path.glob("masks_*.zarr"))}
    return stores, {r.id: r for r in manifest.records}, manifest.classes


def _png_task(store: Path, rows: range, mask_dir: Path, image_dir: Path | None, images: dict[str, str] | None) -> int:
    """Write one shard's masks as PNGs; with `image_dir`, copy the images (`images`: this shard's id ->
    image path) there too."""
    arrays = ImageArrays(store)
    for i, mask in zip(rows, arrays.rows(rows.start, rows.stop), strict=True):
        image_id = arrays.ids[i]
        write_mask(mask_dir / f"{image_id}.png", mask)
        if image_dir is not None:
            source = Path(images[image_id])
            shutil.copyfile(source, image_dir / f"{image_id}{source.suffix}")
    return len(rows)


def _rle_task(store: Path, rows: range, image_ids: dict[str, int]) -> list[dict[str, Any]]:
    """One compressed RLE per (image, category present), categories = the run's label ids."""
    arrays = ImageArrays(store)
    annotations = []
    for i, mask in zip(rows, arrays.rows(rows.start, rows.stop), strict=True):
        for label in np.unique(mask):
            if label in (0, IGNORE_INDEX):
                continue
            rle = coco_mask.encode(np.asfortranarray((mask == label).astype(np.uint8)))
            annotations.append(
                {
                    "image_id": image_ids[arrays.ids[i]],
                    "category_id": int(label),
                    "iscrowd": 0,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "area": float(coco_mask.area(rle)),
                    "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                }
            )
    return annotations


def _image_ids(ids: list[str]) -> dict[str, int]:
    """COCO wants integer ids: the numeric ids themselves where all are numbers (COCO file stems), else 1..N."""
    if all(i.isdigit() for i in ids):
        return {i: int(i) for i in ids}
    return {i: n + 1 for n, i in enumerate(ids)}


def export_masks(run_dir: Path, what: str, fmt: str, out: Path, client: Client) -> dict[str, int]:
    """Write the masks of `what` in format `fmt` under `out`; return the image count per split."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}; allowed: {', '.join(FORMATS)}")
    stores, by_id, classes = mask_stores(run_dir, what)
    counts = {}
    for split, store in stores.items():
        ids = ImageArrays(store).ids
        chunks = [range(s, min(s + SHARD, len(ids))) for s in range(0, len(ids), SHARD)]
        if fmt == "coco":
            image_ids = _image_ids(ids)
            parts = client.gather([client.submit(_rle_task, store, rows, image_ids, pure=False) for rows in chunks])
            annotations = [a for part in parts for a in part]
            for n, a in enumerate(annotations, 1):
                a["id"] = n
            doc = {
                "images": [
                    {
                        "id": image_ids[i],
                        "file_name": Path(by_id[i].image).name,
                        "height": by_id[i].height,
                        "width": by_id[i].width,
                    }
                    for i in ids
                ],
                "categories": [{"id": k, "name": name} for k, name in enumerate(classes) if k > 0],
                "annotations": annotations,
            }
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{what}_{split}.json").write_text(json.dumps(doc))
        else:
            if fmt == "voc":
                mask_dir, image_dir = out / "SegmentationClass", None
                list_file = out / "ImageSets" / "Segmentation" / f"{split}.txt"
            else:  # mmseg CustomDataset layout: img_dir/<split>, ann_dir/<split>, a split file
                mask_dir, image_dir = out / "ann_dir" / split, out / "img_dir" / split
                list_file = out / "splits" / f"{split}.txt"
                image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            list_file.parent.mkdir(parents=True, exist_ok=True)
            futures = [  # each task gets only its own shard's image paths: task size stays flat as data grows
                client.submit(
                    _png_task,
                    store,
                    rows,
                    mask_dir,
                    image_dir,
                    {ids[i]: by_id[ids[i]].image for i in rows} if image_dir else None,
                    pure=False,
                )
                for rows in chunks
            ]
            client.gather(futures)
            list_file.write_text("".join(f"{i}\n" for i in ids))
        counts[split] = len(ids)
        log.info("export: %d %s masks of split %s as %s -> %s", len(ids), what, split, fmt, out)
    if fmt == "mmseg":
        (out / "classes.json").write_text(
            json.dumps({"classes": list(classes), "reduce_zero_label": False, "ignore_index": IGNORE_INDEX}, indent=1)
        )
    return counts
