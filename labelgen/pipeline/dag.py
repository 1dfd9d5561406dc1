"""The DAG, in one place.

index -> train_cam -> export_cams -> pseudo_labels -> train_decoder -> predict
                           \\______________\\___________________________\\__-> evaluate
corrections (optional: where people's corrections were pulled) -> train_decoder, evaluate
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from labelgen.config import Recipe
from labelgen.errors import ConfigError
from labelgen.pipeline.stage import Stage

ORDER: tuple[str, ...] = (
    "index",
    "train_cam",
    "export_cams",
    "pseudo_labels",
    "corrections",
    "train_decoder",
    "predict",
    "evaluate",
)
OPTIONAL = ("corrections",)  # stages with `present`: in a run only where their input is there


@functools.cache
def _stage(name: str) -> Stage:
    stage = importlib.import_module(f"labelgen.stages.{name}").STAGE
    assert stage.name == name, f"labelgen.stages.{name} defines stage {stage.name!r}"
    return stage


class _Stages(Mapping[str, Stage]):
    """The stages by name, each imported on first use. A dask worker running a unit (the executor's
    `run_unit`) imports only that unit's stage module; importing every stage there would load torch
    and timm into every CPU worker (seconds per worker) whatever the unit needs; a run of `index`
    alone needs no model stage either."""

    def __getitem__(self, name: str) -> Stage:
        if name not in ORDER:
            raise KeyError(name)
        return _stage(name)

    def __contains__(self, name: object) -> bool:
        return name in ORDER  # without importing it

    def __iter__(self) -> Iterator[str]:
        return iter(ORDER)

    def __len__(self) -> int:
        return len(ORDER)


STAGES: Mapping[str, Stage] = _Stages()
MASK_STAGES = ("export_cams", "pseudo_labels", "predict")  # what `evaluate` scores, where present


def stages_for(target: str, recipe: Recipe, run_dir: Path | None = None) -> list[str]:
    """The stages a `labelgen run TARGET` brings up to date, in DAG order.

    A mask-producing target is followed by `evaluate` over whatever masks the run holds;
    `full` (or `evaluate`) means every stage. An optional stage (`OPTIONAL`) other than the target
    is part of it only where `run_dir` is given and the stage's `present` says so.
    """
    producers = [n for n in ORDER if n != "evaluate"]
    if target in ("full", "evaluate"):
        target = producers[-1]
    if target not in producers:
        raise ConfigError(f"unknown stage {target!r}; allowed: {', '.join([*producers, 'evaluate', 'full'])}")
    needed = {target}
    for name in reversed(producers):
        if name in needed:
            needed.update(STAGES[name].inputs_for(recipe))
    names = [n for n in producers if n in needed]
    if any(n in MASK_STAGES for n in names):
        names.append("evaluate")
        needed.update(i for i in STAGES["evaluate"].inputs_for(recipe) if i in OPTIONAL)  # its corrections
    absent = {n for n in OPTIONAL if n != target and not (run_dir and STAGES[n].present(recipe, run_dir))}
    return [n for n in ORDER if (n in needed or n in names) and n not in absent]


def stage_inputs(name: str, names: list[str], recipe: Recipe) -> list[str]:
    """Inputs of `name` among the stages of this run (evaluate takes whichever mask stages are there)."""
    return [i for i in STAGES[name].inputs_for(recipe) if i in names]
