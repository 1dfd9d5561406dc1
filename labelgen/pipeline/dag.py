"""The DAG, in one place.

index -> train_cam -> export_cams -> pseudo_labels -> train_decoder -> predict
                           \\______________\\___________________________\\__-> evaluate
"""

from __future__ import annotations

from labelgen.config import Recipe
from labelgen.errors import ConfigError
from labelgen.pipeline.stage import Stage
from labelgen.stages import evaluate, export_cams, index, predict, pseudo_labels, train_cam, train_decoder

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        index.STAGE,
        train_cam.STAGE,
        export_cams.STAGE,
        pseudo_labels.STAGE,
        train_decoder.STAGE,
        predict.STAGE,
        evaluate.STAGE,
    )
}
ORDER: tuple[str, ...] = ("index", "train_cam", "export_cams", "pseudo_labels", "train_decoder", "predict", "evaluate")
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
