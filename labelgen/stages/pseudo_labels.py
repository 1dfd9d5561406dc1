"""pseudo_labels: background threshold + argmax + dense CRF on the label map -> `masks.zarr`
(weaktr-method.md §1.8, §2). CPU work, one dask task per shard, in parallel worker processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelgen.config import PseudoLabelsParams
from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.numerics.crf import CrfParams, crf_on_labels
from labelgen.numerics.maps_to_labels import cam_argmax, indices_to_labels, resize_maps
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit, UnitResult, shard_units, summarise_shards
from labelgen.store.sharded import ImageArrays, StoreLayout, create_mask_store, write_mask_shard

MASKS = "masks.zarr"


def pseudo_label(image: np.ndarray, maps: np.ndarray, labels: np.ndarray, p: PseudoLabelsParams) -> np.ndarray:
    """One image's pseudo-label (H×W uint8) from its normalised CAMs (k, h, w) and their labels."""
    maps = resize_maps(maps, image.shape[:2])
    index = cam_argmax(maps, p.bg_threshold)
    if p.crf:
        index = crf_on_labels(image, index, len(labels) + 1, CrfParams.of(p), p.crf_gt_prob)
    return indices_to_labels(index, labels)


def label_shard(
    p: PseudoLabelsParams,
    cams_path: Path,
    records: list[ImageRecord],
    layout: StoreLayout,
    shard: int,
    store: Path,
    max_pixels: int,
) -> UnitResult:
    rows = layout.shard_range(shard)
    cams = ImageArrays(cams_path)
    masks = []
    for i, r, (maps, labels) in zip(rows, records, cams.rows(rows.start, rows.stop), strict=True):
        assert cams.ids[i] == r.id, "cams.zarr rows follow the manifest's train split"
        masks.append(pseudo_label(read_image(r.image, max_pixels, r.orientation), maps, labels, p))
    return write_mask_shard(store, layout, shard, masks), {"images": len(records)}


def _plan(ctx: StageContext) -> list[Unit]:
    cams_path = ctx.input_path("export_cams", "cams")
    cams = ImageArrays(cams_path)
    manifest = Manifest.load(ctx.input_path("index", "manifest"))
    by_id = {r.id: r for r in manifest.records}
    records = [by_id[i] for i in cams.ids]
    shard_size = ctx.recipe["export_cams"].shard_size
    layout = StoreLayout(tuple(cams.ids), tuple((r.height, r.width) for r in records), shard_size)
    store = ctx.output_path("masks")
    if not (store / "zarr.json").is_file():
        create_mask_store(
            store, layout, {"classes": list(manifest.classes), "split": ctx.recipe["dataset"].train_split}
        )
    max_pixels = ctx.recipe["dataset"].max_image_pixels
    return shard_units(label_shard, ctx.params, cams_path, records, layout, store, max_pixels)


STAGE = Stage(
    name="pseudo_labels",
    version=1,
    section="pseudo_labels",
    inputs=("index", "export_cams"),
    gpu=False,
    plan=_plan,
    finalize=summarise_shards,
    outputs=(Output("masks", MASKS, "the train split's pseudo-masks, one zarr row per image"),),
)
