"""index: scan a data set, validate every image, read tags and check GT -> manifest + problems.

The work is the data-set service's (labelgen/data/index.py, which describes the files); this stage
cuts it into one unit per slice of `dataset.index_slice` images and assembles the manifest once
every slice is done. Tasks receive paths.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from labelgen.config import DatasetParams, Recipe
from labelgen.data.demo import generate_demo
from labelgen.data.fingerprint import data_fingerprint
from labelgen.data.index import MANIFEST, PROBLEMS, assemble_index, check_data_root, data_root
from labelgen.pipeline.indexing import index_units
from labelgen.pipeline.stage import Output, Stage, StageContext, Unit

log = logging.getLogger(__name__)


def _plan(ctx: StageContext) -> list[Unit]:
    params: DatasetParams = ctx.params
    root = data_root(params, ctx.artifact.run_dir)
    if params.name == "demo":
        generate_demo(root, params)
    return index_units(params, root, ctx.artifact.path)[1]


def _finalize(ctx: StageContext, records: list[dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    info = assemble_index(ctx.params.name, ctx.artifact.path)
    log.info(
        "index: %d images %s, %d problem(s), assembled in %.1fs -> %s",
        info["images"],
        info["splits"],
        info["problems"],
        time.perf_counter() - started,
        ctx.artifact.path / MANIFEST,
    )
    return info


def _key_extra(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """The generated demo set is fully described by its params; a real data set by where it is and
    what it holds now (so an edited data set makes a new index, never a stale one)."""
    params: DatasetParams = recipe["dataset"]
    if params.name == "demo" and not params.root:
        return {"root": ""}
    root = data_root(params, run_dir)
    return {"root": str(root), "data": data_fingerprint(root) if root.is_dir() else None}


STAGE = Stage(
    name="index",
    version=3,  # 2: COCO GT kept as shapes (gt/*.cocogt.json), rasterised when read; 3: shapes checked
    # against their image and bbox, manifest schema 4 (category id 0 kept)
    section="dataset",
    inputs=(),
    gpu=False,
    plan=_plan,
    finalize=_finalize,
    outputs=(
        Output("manifest", MANIFEST, "every usable image: path, size, orientation, split, tags, GT"),
        Output("problems", PROBLEMS, "every file left out or converted, with the reason"),
    ),
    key_extra=_key_extra,
    checks=(check_data_root,),
)
