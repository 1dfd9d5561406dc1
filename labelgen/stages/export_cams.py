"""export_cams: multi-scale + flip fine CAMs of every train image -> `cams.zarr` (one task per shard).

Only the tagged classes are stored, min–max normalised, float16, at full resolution // stride.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from labelgen.config import ExportCamsParams
from labelgen.data.images import read_image
from labelgen.data.manifest import ImageRecord, Manifest
from labelgen.errors import ConfigError
from labelgen.models.cam_inference import load_cam_model, multiscale_cams
from labelgen.models.precision import check_precision
from labelgen.models.weaktr import CAM_KINDS
from labelgen.pipeline.stage import Stage, StageContext, Unit, UnitResult, shard_units, summarise_shards
from labelgen.stages.index import load_manifest
from labelgen.stages.train_cam import MODEL
from labelgen.store.checkpoint import pick_device
from labelgen.store.sharded import StoreLayout, create_cam_store, write_cam_shard

log = logging.getLogger(__name__)

CAMS = "cams.zarr"


def stored_size(record: ImageRecord, stride: int) -> tuple[int, int]:
    return -(-record.height // stride), -(-record.width // stride)


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
    model, mean, std = load_cam_model(model_path, device)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for j, r in enumerate(records):
        by_size[(r.height, r.width)].append(j)
    cams: list[Any] = [None] * len(records)
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
                stored_size(records[batch[0]], params.stride),
                mean,
                std,
                params.precision,
                params.batch_size,
            )
            for j, m in zip(batch, maps, strict=True):
                cams[j] = (m, records[j].tags)
    files = write_cam_shard(store, layout, shard, cams)
    return files, {"images": len(records)}


def _train_records(ctx: StageContext) -> tuple[Manifest, list[ImageRecord]]:
    manifest = load_manifest(ctx.inputs["index"])
    return manifest, manifest.split(ctx.recipe["dataset"].train_split)


def _plan(ctx: StageContext) -> list[Unit]:
    p: ExportCamsParams = ctx.params
    if p.cam not in CAM_KINDS:
        raise ConfigError(f"export_cams.cam={p.cam!r}; allowed: {', '.join(CAM_KINDS)}")
    check_precision(p.precision, "export_cams.precision")
    if not p.scales or p.scales[0] != 1.0:
        raise ConfigError(f"export_cams.scales={list(p.scales)}: the first scale must be 1.0 (it sets the output size)")
    manifest, records = _train_records(ctx)
    layout = StoreLayout(tuple(r.id for r in records), tuple(stored_size(r, p.stride) for r in records), p.shard_size)
    store = ctx.artifact.path / CAMS
    if not (store / "zarr.json").is_file():  # created once; a resumed run keeps the finished shards
        create_cam_store(
            store, layout, max(len(r.tags) for r in records), {"stride": p.stride, "classes": list(manifest.classes)}
        )
    model = ctx.inputs["train_cam"].path / MODEL
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
)
