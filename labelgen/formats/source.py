"""What a mask export reads (the finished mask stores of a run and its manifest) and the pieces every
format shares: shards of images per task, and each image's frame.

Frame: every mask is in labelgen's frame of its image, the stored pixels with the manifest row's
`orientation` (EXIF 1..8) applied; the COCO `width`/`height` are that frame's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from labelgen.data.images import exif_orientation
from labelgen.data.index import data_root, dataset_splits
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.errors import ArtifactError, ConfigError
from labelgen.pipeline.runner import plan_run
from labelgen.pipeline.stage import Unit, UnitResult, output_path
from labelgen.pipeline.status import last_recipe
from labelgen.store.sharded import ImageArrays

log = logging.getLogger(__name__)

WHATS = {"pseudo_labels": "pseudo_labels", "predictions": "predict"}
SHARD = 64  # images per export task

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


def shards(n: int) -> list[range]:
    return [range(s, min(s + SHARD, n)) for s in range(0, n, SHARD)]


def export_units(
    source: ExportSource, fn: Callable[..., UnitResult], extra: Callable[[str, int, range], tuple]
) -> list[tuple[str, Unit]]:
    """One unit per shard of `SHARD` images of every split, numbered across splits, with its split:
    `fn(store, rows, frames, *extra(split, shard, rows))` writes the shard's files and returns them with
    a small info dict, which its completion record keeps (a resumed export reads it from there)."""
    units: list[tuple[str, Unit]] = []
    for split, store in source.stores.items():
        records = source.records(split)
        for shard, rows in enumerate(shards(len(records))):
            label = f"{split} shard {shard} (images {rows.start}-{rows.stop - 1})"
            args = (store, rows, frames_of(records, rows), *extra(split, shard, rows))
            units.append((split, Unit(len(units), fn, args, label)))
    return units


def frames_of(records: list[ImageRecord], rows: range) -> dict[str, Frame]:
    """One shard's images: id -> (path, orientation). Each task gets only its own shard's rows, so
    task size stays flat as the data set grows."""
    return {records[i].id: (records[i].image, records[i].orientation) for i in rows}


def file_orientation(path: Path | str) -> int:
    """The EXIF orientation tag of an image file (1..8; 1 when absent). Reads the header only."""
    with Image.open(path) as img:
        return exif_orientation(img)


def other_frame_count(frames: dict[str, Frame]) -> int:
    """How many images EXIF-applying readers (OpenCV, mmcv, detectron2) decode in another frame than
    labelgen's: files whose EXIF tag differs from the orientation labelgen applied."""
    return sum(file_orientation(path) != orientation for path, orientation in frames.values())


def warn_other_frame(count: int, fmt: str, out: Path) -> None:
    if count:
        log.warning(
            "export: %d image(s) carry an EXIF orientation other than the one labelgen applied; readers that "
            "apply EXIF (OpenCV, mmcv, detectron2) decode them turned against their %s masks in %s. "
            "`--format mmseg` writes those images in the masks' frame",
            count,
            fmt,
            out,
        )
