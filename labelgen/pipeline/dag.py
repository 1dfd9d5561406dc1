"""The DAG, in one place.

index -> train_cam -> export_cams -> pseudo_labels -> train_decoder -> predict
                           \\______________\\___________________________\\__-> evaluate
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Mapping

from labelgen.config import Recipe
from labelgen.errors import ConfigError
from labelgen.pipeline.stage import Stage

ORDER: tuple[str, ...] = ("index", "train_cam", "export_cams", "pseudo_labels", "train_decoder", "predict", "evaluate")


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


def stages_for(target: str, recipe: Recipe) -> list[str]:
    """The stages a `labelgen run TARGET` brings up to date, in DAG order.

    A mask-producing target is followed by `evaluate` over whatever masks the run holds;
    `full` (or `evaluate`) means every stage.
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
    return names


def stage_inputs(name: str, names: list[str], recipe: Recipe) -> list[str]:
    """Inputs of `name` among the stages of this run (evaluate takes whichever mask stages are there)."""
    return [i for i in STAGES[name].inputs_for(recipe) if i in names]
