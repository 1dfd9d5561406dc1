"""The DAG, in one place.

index -> train_cam -> export_cams -> pseudo_labels -> train_decoder -> predict
                           \\______________\\___________________________\\__-> evaluate
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping

from labelgen.config import Recipe
from labelgen.errors import ConfigError
from labelgen.pipeline.stage import Stage


@functools.cache
def _stages() -> dict[str, Stage]:
    from labelgen.stages import evaluate, export_cams, index, predict, pseudo_labels, train_cam, train_decoder

    stages = (index, train_cam, export_cams, pseudo_labels, train_decoder, predict, evaluate)
    return {m.STAGE.name: m.STAGE for m in stages}


class _Stages(Mapping[str, Stage]):
    """The stages by name, imported on first use. A dask worker imports this module with the runner
    only to run a unit (`run_unit`); importing every stage there would load torch and timm into
    every CPU worker (seconds per worker) whatever the unit needs. The unit's own module imports
    what it uses."""

    def __getitem__(self, name: str) -> Stage:
        return _stages()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_stages())

    def __len__(self) -> int:
        return len(_stages())


STAGES: Mapping[str, Stage] = _Stages()
ORDER: tuple[str, ...] = ("index", "train_cam", "export_cams", "pseudo_labels", "train_decoder", "predict", "evaluate")
MASK_STAGES = ("export_cams", "pseudo_labels", "predict")  # what `evaluate` scores, where present
TARGETS = (*ORDER, "full")


def stages_for(target: str, recipe: Recipe) -> list[str]:
    """The stages a `labelgen run TARGET` brings up to date, in DAG order.

    A mask-producing target is followed by `evaluate` over whatever masks the run holds;
    `full` (or `evaluate`) means every stage.
    """
    producers = [n for n in ORDER if n in STAGES and n != "evaluate"]
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
