"""What a stage is: a name, its inputs, and two functions, `plan` and `finalize`.

`plan` cuts the work into units (one per shard, or one for a training run). Each unit runs as one
dask task, writes only inside the artifact folder, and returns the files it vouches for plus a
small info dict; the runner records both in the shard's completion record. `finalize` runs once all
units are done, on the driver, writes summary files, and returns what goes into `_SUCCESS.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelgen.config import Recipe
from labelgen.store.artifact import Artifact
from labelgen.store.sharded import StoreLayout

UnitResult = tuple[list[Path], dict[str, Any]]


@dataclass(frozen=True)
class Unit:
    index: int  # shard index (0 for single-unit stages)
    fn: Callable[..., UnitResult]  # module-level, so dask can pickle it
    args: tuple[Any, ...]
    label: str  # what a log line calls it, e.g. "shard 3 (images 96-127)"


@dataclass(frozen=True)
class StageContext:
    params: Any  # the stage's frozen params dataclass
    recipe: Recipe
    artifact: Artifact
    inputs: dict[str, Artifact]


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump when the stage's output changes for the same params
    section: str  # the recipe section holding its params
    inputs: tuple[str, ...]
    gpu: bool  # its units carry the dask resource annotation GPU=1 where workers declare GPUs
    plan: Callable[[StageContext], list[Unit]]
    finalize: Callable[[StageContext, list[dict[str, Any]]], dict[str, Any]]
    key_extra: Callable[[Recipe, Path], dict[str, Any]] = field(default=lambda recipe, run_dir: {})
    # the inputs this recipe really uses, where that depends on a setting (default: all of `inputs`)
    used_inputs: Callable[[Recipe], tuple[str, ...]] | None = None
    # checks that need no cluster and no input (a data root exists, weights can be had), run by
    # `prepare_run` for every stage that will run, before a cluster starts; each raises a LabelgenError
    checks: tuple[Callable[[Recipe, Path], None], ...] = ()

    def inputs_for(self, recipe: Recipe) -> tuple[str, ...]:
        return self.used_inputs(recipe) if self.used_inputs else self.inputs


def shard_units(
    fn: Callable[..., UnitResult],
    params: Any,
    source: Path,
    records: list,
    layout: StoreLayout,
    store: Path,
    max_pixels: int,
    first_index: int = 0,
    prefix: str = "",
) -> list[Unit]:
    """One unit per shard of `layout`, calling fn(params, source, shard's records, layout, shard, store,
    max_pixels): the shape of every stage that maps images to a sharded zarr store."""
    units = []
    for shard in range(layout.num_shards):
        rows = layout.shard_range(shard)
        args = (params, source, records[rows.start : rows.stop], layout, shard, store, max_pixels)
        label = f"{prefix}shard {shard} (images {rows.start}-{rows.stop - 1})"
        units.append(Unit(first_index + shard, fn, args, label))
    return units


def summarise_shards(ctx: StageContext, records: list[dict[str, Any]]) -> dict[str, Any]:
    """`finalize` of a per-shard image stage: image, shard and task-time totals."""
    return {
        "images": sum(r["images"] for r in records),
        "shards": len(records),
        "task_seconds": round(sum(r["seconds"] for r in records), 2),
    }
