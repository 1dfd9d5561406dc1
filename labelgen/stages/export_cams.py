"""export_cams: multi-scale + flip fine CAMs of every train image -> `cams.zarr` (one task per shard).

Only the tagged classes are stored, min–max normalised, float16, at full resolution // stride with
the long side capped at `max_side` (`stored_size`). Images of any size the index accepts run within
a bounded memory: views are at most `max_side` on their long side and at least one patch on their
short side (`view_sizes`), and a forward pass keeps at most `attention_cache_mb` of attention maps.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from labelgen.config import ExportCamsParams
from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.devices import pick_device
from labelgen.models.cam_inference import fit_factor, load_cam_model, multiscale_cams
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit, UnitResult, shard_units, summarise_shards
from labelgen.store.sharded import StoreLayout, create_cam_store, write_cam_shard

log = logging.getLogger(__name__)

CAMS = "cams.zarr"


def stored_size(record: ImageRecord, stride: int, max_side: int) -> tuple[int, int]:
    """(h, w) of an image's stored CAMs: its size // stride (rounded up), and if that has a side longer
    than max_side, resized to a long side of max_side (aspect ratio kept, each side at least 1). The
    CAMs come from a 16-px patch grid of views at most max_side long, so the cap loses nothing real."""
    h, w = -(-record.height // stride), -(-record.width // stride)
    if max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _log_resizing(record: ImageRecord, p: ExportCamsParams, patch: int) -> None:
    """Say (INFO) when an image's views are not its plain scales: shrunk to max_side, or upsampled or
    padded to one patch."""
    fit = fit_factor(record.height, record.width, max(p.scales), p.max_side)
    size = f"{record.width}×{record.height} px"
    if fit < 1.0:
        log.info(
            "export_cams: image %s is %s; its views are shrunk by a factor %.4g (export_cams.max_side=%d)",
            record.id,
            size,
            fit,
            p.max_side,
        )
    if round(min(record.height, record.width) * min(p.scales) * fit) < patch:  # as view_sizes decides
        log.info(
            "export_cams: image %s is %s; views under a %d-px patch are upsampled or padded", record.id, size, patch
        )


def export_shard(
    params: ExportCamsParams,
    model_path: Path,
    records: list[ImageRecord],
    layout: StoreLayout,
    shard: int,
    store: Path,
    max_pixels: int,
) -> UnitResult:
    """The dask task: CAMs of one shard's images, batched by image size, written as one shard."""
    device = pick_device(params.device)
    model = load_cam_model(model_path, device)
    for r in records:
        _log_resizing(r, params, model.backbone.patch_size)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    cams: list[Any] = [None] * len(records)
    for j, r in enumerate(records):
        if r.tags:
            by_size[(r.height, r.width)].append(j)
        else:  # a negative (untagged image): no class to map, no forward pass spent on it
            cams[j] = (np.zeros((0, *stored_size(r, params.stride, params.max_side)), np.float32), ())
    for members in by_size.values():
        for start in range(0, len(members), params.batch_size):
            batch = members[start : start + params.batch_size]
            images = [read_image(records[j].image, max_pixels, records[j].orientation) for j in batch]
            maps = multiscale_cams(
                model,
                images,
                [records[j].tags for j in batch],
                params.scales,
                params.flip,
                params.cam,
                stored_size(records[batch[0]], params.stride, params.max_side),
                params.precision,
                params.batch_size,
                max_side=params.max_side,
                cache_bytes=params.attention_cache_mb * 2**20,
            )
            for j, m in zip(batch, maps, strict=True):
                cams[j] = (m, records[j].tags)
    files = write_cam_shard(store, layout, shard, cams)
    return files, {"images": len(records)}


def _train_records(ctx: StageContext) -> tuple[Manifest, list[ImageRecord]]:
    manifest = Manifest.load(ctx.input_path("index", "manifest"))
    return manifest, manifest.split(ctx.recipe["dataset"].train_split)


def _plan(ctx: StageContext) -> list[Unit]:
    p: ExportCamsParams = ctx.params
    manifest, records = _train_records(ctx)
    layout = StoreLayout(
        tuple(r.id for r in records), tuple(stored_size(r, p.stride, p.max_side) for r in records), p.shard_size
    )
    store = ctx.output_path("cams")
    if not (store / "zarr.json").is_file():  # created once; a resumed run keeps the finished shards
        create_cam_store(
            store,
            layout,
            max(len(r.tags) for r in records),
            {"stride": p.stride, "max_side": p.max_side, "classes": list(manifest.classes)},
        )
    model = ctx.input_path("train_cam", "model")
    max_pixels = ctx.recipe["dataset"].max_image_pixels
    return shard_units(export_shard, p, model, records, layout, store, max_pixels)


STAGE = Stage(
    name="export_cams",
    version=1,
    section="export_cams",
    inputs=("index", "train_cam"),
    gpu=True,
    plan=_plan,
    finalize=summarise_shards,
    outputs=(Output("cams", CAMS, "the train split's CAMs of the tagged classes, one zarr row per image"),),
)
