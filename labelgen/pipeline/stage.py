"""What a stage is: a name, its inputs, and two functions, `plan` and `finalize`.

A stage declares the files and folders it writes that others may read (`outputs`, luigi's
`output()`); a stage reads another's file only through `StageContext.input_path`, and export and
status find them through the same declarations.

`plan` cuts the work into units (one per shard, or one for a training run). Each unit runs as one
dask task, writes only inside the artifact folder, and returns the files it vouches for plus a
small info dict; the runner records both in the shard's completion record. `finalize` runs once all
units are done, on the driver, writes summary files, and returns what goes into `_SUCCESS.json`.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelgen.config import Recipe
from labelgen.errors import ArtifactError
from labelgen.store.artifact import Artifact, missing_output
from labelgen.store.sharded import StoreLayout

UnitResult = tuple[list[Path], dict[str, Any]]


@dataclass(frozen=True)
class Unit:
    index: int  # shard index (0 for single-unit stages)
    fn: Callable[..., UnitResult]  # module-level, so dask can pickle it
    args: tuple[Any, ...]
    label: str  # what a log line calls it, e.g. "shard 3 (images 96-127)"


@dataclass(frozen=True)
class Output:
    """A file or folder a stage writes into its artifact for others to read. `pattern` is its name
    there, with at most one `{field}` where the stage writes one per value (predict:
    `masks_{split}.zarr`)."""

    name: str  # what readers call it: ctx.input_path("pseudo_labels", "masks")
    pattern: str
    about: str = ""
    optional: bool = False  # a pattern with a field the stage may write for no value (predict's raw masks)

    @property
    def param(self) -> str | None:
        """The pattern's one `{field}`, if any."""
        fields = [f for _, f, _, _ in string.Formatter().parse(self.pattern) if f is not None]
        assert len(fields) <= 1, f"output {self.name}: at most one {{field}} in {self.pattern!r}"
        return fields[0] if fields else None

    def filename(self, **params: str) -> str:
        if set(params) != {self.param} - {None}:
            given = ", ".join(f"{k}=" for k in params) or "no field"
            takes = self.param or "no field"
            raise ArtifactError(f"output {self.name!r} is {self.pattern}: it takes {takes}, not {given}")
        return self.pattern.format(**params)

    def instances(self, folder: Path) -> dict[str, Path]:
        """Of a pattern with a field: each such file in `folder`, by its field's value, sorted."""
        head, _, tail = self.pattern.partition(f"{{{self.param}}}")
        return {p.name[len(head) : len(p.name) - len(tail)]: p for p in sorted(folder.glob(f"{head}*{tail}"))}


def output_path(stage: Stage, art: Artifact, name: str, **params: str) -> Path:
    """The path of `stage`'s declared output `name` in its artifact `art`; a one-line `ArtifactError`
    when the stage declares no such output or the file is not there."""
    path = art.path / _declared(stage, art, name).filename(**params)
    if not path.exists():
        raise ArtifactError(missing_output(art, name, path))
    return path


def output_paths(stage: Stage, art: Artifact, name: str) -> dict[str, Path]:
    """Every file of a declared output with a field (predict's `masks_{split}.zarr`), by the field's
    value; a one-line `ArtifactError` when there is none (an optional output: empty)."""
    out = _declared(stage, art, name)
    if out.param is None:
        raise ArtifactError(f"{stage.name} output {name!r} is one file ({out.pattern}): read it with input_path")
    found = out.instances(art.path)
    if not found and not out.optional:
        raise ArtifactError(missing_output(art, name, art.path / out.pattern))
    return found


def written_outputs(stage: Stage, art: Artifact) -> dict[str, list[str]]:
    """Each declared output of a finished stage, as the paths it wrote (relative to the artifact), for
    `_SUCCESS.json`, where `labelgen status` reads them without importing the stage; a one-line
    `ArtifactError` when the stage did not write one it declares."""
    written = {}
    for out in stage.outputs:
        if out.optional:
            written[out.name] = [p.name for p in out.instances(art.path).values()]
            continue
        found = output_paths(stage, art, out.name).values() if out.param else [output_path(stage, art, out.name)]
        written[out.name] = [p.name for p in found]
    return written


def _declared(stage: Stage, art: Artifact, name: str) -> Output:
    try:
        return stage.output(name)
    except ArtifactError as e:
        raise ArtifactError(f"run {art.run_dir}: {e}") from None


@dataclass(frozen=True)
class StageContext:
    params: Any  # the stage's frozen params dataclass
    recipe: Recipe
    artifact: Artifact
    inputs: dict[str, Artifact]

    def input_path(self, stage: str, name: str, **params: str) -> Path:
        """The path of output `name` of input `stage` (`field=value` for a pattern with a field), as
        that stage declares it: the one way a stage reads another stage's files."""
        return output_path(self._input_stage(stage, name), self.inputs[stage], name, **params)

    def input_paths(self, stage: str, name: str) -> dict[str, Path]:
        """Every file of input `stage`'s output `name` with a field, by the field's value."""
        return output_paths(self._input_stage(stage, name), self.inputs[stage], name)

    def output_path(self, name: str, **params: str) -> Path:
        """Where this stage writes its own declared output `name`."""
        from labelgen.pipeline.dag import STAGES

        return self.artifact.path / STAGES[self.artifact.stage].output(name).filename(**params)

    def _input_stage(self, stage: str, name: str) -> Stage:
        from labelgen.pipeline.dag import STAGES  # dag imports this module

        if stage not in self.inputs:
            me, run = self.artifact.stage, self.artifact.run_dir
            raise ArtifactError(
                f"{me} of run {run} reads output {name!r} of {stage}, which is not one of its inputs in this run "
                f"({', '.join(self.inputs) or 'none'}); add {stage} to the inputs {me} declares"
            )
        return STAGES[stage]


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump when the stage's output changes for the same params
    section: str  # the recipe section holding its params
    inputs: tuple[str, ...]
    gpu: bool  # its units carry the dask resource annotation GPU=1 where workers declare GPUs
    plan: Callable[[StageContext], list[Unit]]
    finalize: Callable[[StageContext, list[dict[str, Any]]], dict[str, Any]]
    # what it writes for other stages, export and status to read (each through these declarations)
    outputs: tuple[Output, ...] = ()
    key_extra: Callable[[Recipe, Path], dict[str, Any]] = field(default=lambda recipe, run_dir: {})
    # the inputs this recipe really uses, where that depends on a setting (default: all of `inputs`)
    used_inputs: Callable[[Recipe], tuple[str, ...]] | None = None
    # checks that need no cluster and no input (a data root exists, weights can be had), run by
    # `prepare_run` for every stage that will run, before a cluster starts; each raises a LabelgenError
    checks: tuple[Callable[[Recipe, Path], None], ...] = ()
    # checks of settings against the data's class list (background first): with the others where the
    # list is known before any work (VOC, demo, a folder's class file, a finished index), else right
    # after the index has read it (COCO's, from its JSON); each raises a LabelgenError
    class_checks: tuple[Callable[[Recipe, tuple[str, ...]], None], ...] = ()
    # checks of settings against the cluster the run computes on (`check(recipe, artifact folder,
    # client)`: a training's devices against its workers), run once the cluster is up and before any
    # stage of the run starts; each raises a LabelgenError
    cluster_checks: tuple[Callable[[Recipe, Path, Any], None], ...] = ()
    # an optional stage: part of a run only where present(recipe, run_dir) says its input is there
    # (corrections: only where people's corrections were pulled), so runs without it keep their keys
    present: Callable[[Recipe, Path], bool] | None = None

    def inputs_for(self, recipe: Recipe) -> tuple[str, ...]:
        return self.used_inputs(recipe) if self.used_inputs else self.inputs

    def output(self, name: str) -> Output:
        """Its declared output `name`; a one-line `ArtifactError` when it declares none such."""
        for out in self.outputs:
            if out.name == name:
                return out
        declared = ", ".join(o.name for o in self.outputs) or "none"
        raise ArtifactError(
            f"{self.name} declares no output {name!r} (it declares: {declared}); read one of those, or declare "
            f"it in the outputs of labelgen/stages/{self.name}.py"
        )


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
    extra: tuple = (),
) -> list[Unit]:
    """One unit per shard of `layout`, calling fn(params, source, shard's records, layout, shard, store,
    max_pixels, *extra): the shape of every stage that maps images to a sharded zarr store."""
    units = []
    for shard in range(layout.num_shards):
        rows = layout.shard_range(shard)
        args = (params, source, records[rows.start : rows.stop], layout, shard, store, max_pixels, *extra)
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
