"""Export stored masks for other segmenters: VOC palette PNGs, the mmsegmentation folder layout, or
COCO JSON (a dataset file and a results file). One dask task per shard of images.

Frame: every mask is in labelgen's frame of its image, the stored pixels with the manifest row's
`orientation` (EXIF 1..8) applied; the COCO `width`/`height` are that frame's. The mmseg export
writes the images too, in that frame and without an EXIF orientation tag, so that every decoder
(PIL with or without `ImageOps.exif_transpose`, OpenCV, mmcv) gives the pixels the mask lies on.

Ids: the COCO files keep the source's ids (`ImageRecord.source_id`, `Manifest.category_id`), so
they evaluate against the original instances JSON; see `coco_image_ids` for data sets without them.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client
from PIL import Image
from pycocotools import mask as coco_mask

from labelgen.data.images import exif_orientation, read_image
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.data.masks import IGNORE_INDEX, voc_palette, write_mask
from labelgen.errors import ArtifactError, ConfigError
from labelgen.pipeline.runner import plan_run
from labelgen.pipeline.stage import output_path
from labelgen.stages.index import data_root, dataset_splits
from labelgen.status import last_recipe
from labelgen.store.sharded import ImageArrays

log = logging.getLogger(__name__)

FORMATS = ("voc", "mmseg", "coco")
WHATS = {"pseudo_labels": "pseudo_labels", "predictions": "predict"}
IMAGE_FORMATS = ("auto", "jpg", "png")  # the one image suffix of an mmseg export
SHARD = 64  # images per export task
# Re-encoding to JPEG (an image of another format or with an EXIF turn, in a mostly-JPEG export):
# quality 95 without chroma subsampling changes coco128 photos by 1-2 grey levels on average (a
# one-pixel shift: 9-27) at a third to a half of the PNG size; `--image-format png` is lossless.
JPEG_QUALITY = 95
_FORMAT_OF_SUFFIX = {".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".jfif": "jpg", ".png": "png"}
SEG_MAP_SUFFIX = ".png"
MMSEG_CONFIG = "mmseg_dataset.py"
# COCO results need a score; pseudo-masks carry no confidence, so every region gets the same one
# (COCOeval then ranks them in file order, and AP measures the masks' overlap alone).
RESULT_SCORE = 1.0

# An image: (path of the source file, EXIF orientation labelgen applies to it), as in its ImageRecord.
Frame = tuple[str, int]


@dataclass(frozen=True)
class ExportSource:
    """What an export reads: the mask stores of one artifact and the manifest of their images."""

    stores: dict[str, Path]  # split -> masks.zarr
    manifest: Manifest
    train_split: str  # the split the model trained on (the mmseg config's train_dataloader)
    max_pixels: int  # dataset.max_image_pixels, for re-reading images
    # what COCO `file_name`s are relative to, as detectron2's `load_coco_json(json, image_root)` and
    # mmdet's `data_prefix` join them: a folder set's data root (its images lie anywhere under it);
    # None for COCO and VOC sources, whose file names are their image folder's (images/<split>/,
    # JPEGImages/): the bare name
    image_root: Path | None = None

    def records(self, split: str) -> list[ImageRecord]:
        """The manifest rows of a store's images, in store order."""
        by_id = {r.id: r for r in self.manifest.records}
        return [by_id[i] for i in ImageArrays(self.stores[split]).ids]


def export_source(run_dir: Path, what: str) -> ExportSource:
    """The finished mask stores of `what` in a run, with its manifest; `ArtifactError` if unfinished."""
    if what not in WHATS:
        raise ConfigError(f"--what {what!r}; allowed: {', '.join(WHATS)}")
    recipe, _ = last_recipe(run_dir)
    plan = {p.stage.name: p for p in plan_run(recipe, run_dir, "full")}
    art = plan[WHATS[what]].artifact if WHATS[what] in plan else None
    if art is None:  # train_decoder.masks=<folder>: the run has no CAM stages at all
        masks = recipe["train_decoder"].masks
        raise ArtifactError(
            f"{run_dir} makes no {WHATS[what]}: it retrains on the masks in train_decoder.masks={masks}; "
            "export --what predictions, or use that folder itself"
        )
    if not art.is_complete():
        raise ArtifactError(
            f"{WHATS[what]} of {run_dir} is not finished ({art.path}); run `labelgen run {WHATS[what]}` first"
        )
    dataset, stage, index = recipe["dataset"], plan[WHATS[what]].stage, plan["index"]
    if what == "pseudo_labels":  # the train split's masks, in one store
        stores = {dataset.train_split: output_path(stage, art, "masks")}
    else:  # one store per split the run predicts: each missing one is an error, not a smaller export
        stores = {split: output_path(stage, art, "masks", split=split) for split in dataset_splits(dataset)}
    manifest = Manifest.load(output_path(index.stage, index.artifact, "manifest"))
    image_root = data_root(dataset, run_dir) if dataset.name in ("folder", "demo") else None
    return ExportSource(stores, manifest, dataset.train_split, dataset.max_image_pixels, image_root)


def export_masks(
    run_dir: Path, what: str, fmt: str, out: Path, client: Client, image_format: str = "auto"
) -> dict[str, int]:
    """Write the masks of `what` (pseudo_labels | predictions) of a run in format `fmt` under `out`;
    return the image count per split. `image_format` (auto | jpg | png) is the mmseg image suffix."""
    return write_export(export_source(run_dir, what), what, fmt, out, client, image_format)


def write_export(
    source: ExportSource, what: str, fmt: str, out: Path, client: Client, image_format: str = "auto"
) -> dict[str, int]:
    """Write `source`'s masks in format `fmt` under `out`, file names tagged with `what`; return the
    image count per split. Raises `ConfigError` for an unknown format."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"--image-format {image_format!r}; allowed: {', '.join(IMAGE_FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "voc":
        return _export_voc(source, what, out, client)
    if fmt == "mmseg":
        return _export_mmseg(source, what, out, client, image_format)
    return _export_coco(source, what, out, client)


def _shards(n: int) -> list[range]:
    return [range(s, min(s + SHARD, n)) for s in range(0, n, SHARD)]


def _frames(records: list[ImageRecord], rows: range) -> dict[str, Frame]:
    """One shard's images: id -> (path, orientation). Each task gets only its own shard's rows, so
    task size stays flat as the data set grows."""
    return {records[i].id: (records[i].image, records[i].orientation) for i in rows}


# ------------------------------------------------------------------------------------ frames, images
def file_orientation(path: Path | str) -> int:
    """The EXIF orientation tag of an image file (1..8; 1 when absent). Reads the header only."""
    with Image.open(path) as img:
        return exif_orientation(img)


def _other_frame(frames: dict[str, Frame]) -> int:
    """How many images EXIF-applying readers (OpenCV, mmcv, detectron2) decode in another frame than
    labelgen's: files whose EXIF tag differs from the orientation labelgen applied."""
    return sum(file_orientation(path) != orientation for path, orientation in frames.values())


def _warn_other_frame(count: int, fmt: str, out: Path) -> None:
    if count:
        log.warning(
            "export: %d image(s) carry an EXIF orientation other than the one labelgen applied; readers that "
            "apply EXIF (OpenCV, mmcv, detectron2) decode them turned against their %s masks in %s. "
            "`--format mmseg` writes those images in the masks' frame",
            count,
            fmt,
            out,
        )


def image_format(records: list[ImageRecord], choice: str) -> str:
    """The one image format (jpg | png) of an mmseg export: `choice`, or for `auto` the format most
    images already have (fewest re-encoded; a tie takes png, which is lossless)."""
    if choice != "auto":
        return choice
    counts = Counter(_FORMAT_OF_SUFFIX.get(Path(r.image).suffix.lower()) for r in records)
    return "jpg" if counts["jpg"] > counts["png"] else "png"


def reencode_reason(path: Path, orientation: int, fmt: str) -> str | None:
    """Why an image cannot be copied byte for byte into an export of image format `fmt`: "format"
    (another suffix), "orientation" (labelgen turns its pixels, or the file says to turn them);
    None when a copy decodes to labelgen's pixels in every reader."""
    if _FORMAT_OF_SUFFIX.get(path.suffix.lower()) != fmt:
        return "format"
    if orientation != 1 or file_orientation(path) != 1:
        return "orientation"
    return None


def export_image(source: Path, orientation: int, target: Path, fmt: str, max_pixels: int) -> str | None:
    """Write one image to `target` (suffix .`fmt`): a byte copy where nothing must change, else
    labelgen's pixels (`orientation` applied) re-encoded without EXIF: PNG lossless, JPEG at quality
    `JPEG_QUALITY` without chroma subsampling. Returns the reason it was re-encoded, or None."""
    why = reencode_reason(source, orientation, fmt)
    if why is None:
        shutil.copyfile(source, target)
        return None
    pixels = Image.fromarray(read_image(source, max_pixels, orientation))  # RGB, in labelgen's frame
    if fmt == "jpg":
        pixels.save(target, quality=JPEG_QUALITY, subsampling=0)
    else:
        pixels.save(target)
    return why


# ------------------------------------------------------------------------------------------------ voc
def _voc_task(store: Path, rows: range, mask_dir: Path, frames: dict[str, Frame]) -> int:
    """Write one shard's masks as palette PNGs; return how many of its images are in another frame
    for EXIF-applying readers."""
    arrays = ImageArrays(store)
    for i, mask in zip(rows, arrays.rows(rows.start, rows.stop), strict=True):
        write_mask(mask_dir / f"{arrays.ids[i]}.png", mask)
    return _other_frame(frames)


def _export_voc(source: ExportSource, what: str, out: Path, client: Client) -> dict[str, int]:
    """`SegmentationClass/<id>.png` and `ImageSets/Segmentation/<split>.txt`. No images: the masks are
    in labelgen's frame (stored pixels with the manifest's orientation applied); a warning counts the
    images that EXIF-applying readers decode in another frame."""
    mask_dir, list_dir = out / "SegmentationClass", out / "ImageSets" / "Segmentation"
    mask_dir.mkdir(parents=True, exist_ok=True)
    list_dir.mkdir(parents=True, exist_ok=True)
    counts, other = {}, 0
    for split, store in source.stores.items():
        records = source.records(split)
        rows_of = _shards(len(records))
        other += sum(
            client.gather(
                [client.submit(_voc_task, store, r, mask_dir, _frames(records, r), pure=False) for r in rows_of]
            )
        )
        (list_dir / f"{split}.txt").write_text("".join(f"{r.id}\n" for r in records))
        counts[split] = len(records)
        log.info("export: %d %s masks of split %s -> %s", len(records), what, split, mask_dir)
    _warn_other_frame(other, "voc", out)
    return counts


# ---------------------------------------------------------------------------------------------- mmseg
def _mmseg_task(
    store: Path, rows: range, mask_dir: Path, image_dir: Path, frames: dict[str, Frame], fmt: str, max_pixels: int
) -> dict[str, int]:
    """Write one shard's masks and images; return counts of images copied and re-encoded (by reason)."""
    arrays = ImageArrays(store)
    counts: Counter[str] = Counter()
    for i, mask in zip(rows, arrays.rows(rows.start, rows.stop), strict=True):
        image_id = arrays.ids[i]
        path, orientation = frames[image_id]
        write_mask(mask_dir / f"{image_id}{SEG_MAP_SUFFIX}", mask)
        why = export_image(Path(path), orientation, image_dir / f"{image_id}.{fmt}", fmt, max_pixels)
        counts[why or "copied"] += 1
    return dict(counts)


def _export_mmseg(source: ExportSource, what: str, out: Path, client: Client, choice: str) -> dict[str, int]:
    """mmsegmentation's BaseSegDataset layout: `img_dir/<split>/<id>.<fmt>` (one suffix),
    `ann_dir/<split>/<id>.png`, `splits/<split>.txt`, plus the dataset settings to use them."""
    fmt = image_format([r for split in source.stores for r in source.records(split)], choice)
    counts = {}
    for split, store in source.stores.items():
        records = source.records(split)
        mask_dir, image_dir = out / "ann_dir" / split, out / "img_dir" / split
        mask_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        futures = [
            client.submit(
                _mmseg_task, store, r, mask_dir, image_dir, _frames(records, r), fmt, source.max_pixels, pure=False
            )
            for r in _shards(len(records))
        ]
        written = sum((Counter(c) for c in client.gather(futures)), Counter())
        (out / "splits").mkdir(exist_ok=True)
        (out / "splits" / f"{split}.txt").write_text("".join(f"{r.id}\n" for r in records))
        counts[split] = len(records)
        log.info(
            "export: %d %s masks of split %s -> %s; images -> %s as .%s: %d copied, %d re-encoded "
            "(%d for their format, %d for their EXIF orientation)",
            len(records),
            what,
            split,
            mask_dir,
            image_dir,
            fmt,
            written["copied"],
            written["format"] + written["orientation"],
            written["format"],
            written["orientation"],
        )
    settings = mmseg_settings(source, out, fmt)
    (out / "classes.json").write_text(json.dumps(settings["metainfo"] | _suffixes(fmt), indent=1))
    (out / MMSEG_CONFIG).write_text(mmseg_config_text(settings, out / MMSEG_CONFIG))
    log.info("export: mmsegmentation dataset settings -> %s", out / MMSEG_CONFIG)
    return counts


def _suffixes(fmt: str) -> dict[str, Any]:
    """The settings that make mmseg find and read the files: one image suffix, labels as written."""
    return {
        "img_suffix": f".{fmt}",
        "seg_map_suffix": SEG_MAP_SUFFIX,
        "reduce_zero_label": False,
        "ignore_index": IGNORE_INDEX,
    }


def mmseg_settings(source: ExportSource, out: Path, fmt: str) -> dict[str, Any]:
    """The mmsegmentation (>= 1.0) dataset settings of an export: `metainfo` (classes, palette: the
    VOC colours of the palette PNGs) and one `BaseSegDataset` dict per split."""
    classes = list(source.manifest.classes)
    palette = voc_palette()
    metainfo = {"classes": classes, "palette": [list(palette[3 * k : 3 * k + 3]) for k in range(len(classes))]}
    datasets = {
        split: {
            "type": "BaseSegDataset",
            "data_root": str(out),
            "data_prefix": {"img_path": f"img_dir/{split}", "seg_map_path": f"ann_dir/{split}"},
            "ann_file": f"splits/{split}.txt",
            **_suffixes(fmt),
            "metainfo": metainfo,
        }
        for split in source.stores
    }
    return {"metainfo": metainfo, "datasets": datasets, "train_split": source.train_split}


def mmseg_config_text(settings: dict[str, Any], config: Path) -> str:
    """The text of the mmengine config file (Python) `config`: `metainfo`, `train_dataloader` (the
    train split) and, where the export holds another split, `val_dataloader`/`test_dataloader`, each
    with only its `dataset`; a user's config inherits it and adds pipelines, batch sizes, samplers."""
    datasets = settings["datasets"]
    train = settings["train_split"]
    others = [s for s in datasets if s != train]
    lines = [
        "# mmsegmentation >= 1.0 dataset settings, written by `labelgen export --format mmseg`.",
        f"# Inherit it in your config, _base_ = ['{config}'], and add pipeline, batch_size and sampler there.",
        "# Images and label maps share one frame: the images are written without EXIF orientation tags.",
        f"metainfo = {settings['metainfo']!r}",
    ]
    if train in datasets:
        lines.append(f"train_dataloader = dict(dataset={datasets[train]!r})")
    if others:
        lines.append(f"val_dataloader = dict(dataset={datasets[others[0]]!r})")
        lines.append("test_dataloader = val_dataloader")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- coco
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
    """One COCO category per foreground label that has a source id: {id: source category id, name}.
    Labels with id 0 (COCO ids that no category uses) are left out."""
    return [
        {"id": manifest.category_id(k), "name": name}
        for k, name in enumerate(manifest.classes)
        if k > 0 and manifest.category_id(k) > 0
    ]


def _coco_task(
    store: Path, rows: range, image_ids: dict[str, int], category_ids: list[int], frames: dict[str, Frame]
) -> tuple[list[dict[str, Any]], int]:
    """One compressed RLE per (image, foreground category present), ignore (255) left out; and how many
    of the shard's images EXIF-applying readers decode in another frame."""
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
    return regions, _other_frame(frames)


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


def _export_coco(source: ExportSource, what: str, out: Path, client: Client) -> dict[str, int]:
    """Per split `<what>_<split>.json` (dataset) and `<what>_<split>_results.json` (results list)."""
    manifest = source.manifest
    category_ids = [manifest.category_id(k) for k in range(manifest.num_labels)]
    counts, other = {}, 0
    for split, store in source.stores.items():
        records = source.records(split)
        image_ids, rule = coco_image_ids(records)
        futures = []
        for rows in _shards(len(records)):
            frames = _frames(records, rows)
            shard_ids = {i: image_ids[i] for i in frames}
            futures.append(client.submit(_coco_task, store, rows, shard_ids, category_ids, frames, pure=False))
        parts = client.gather(futures)
        regions = [a for part, _ in parts for a in part]
        other += sum(n for _, n in parts)
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
    _warn_other_frame(other, "coco", out)
    return counts
