"""What review reads of a finished run: its recipe, manifest, the masks to send (the decoder's
predictions of the train split, else the pseudo-labels) and evaluate's per-image numbers."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from labelgen.config import Recipe
from labelgen.data.manifest import Manifest
from labelgen.errors import ArtifactError
from labelgen.pipeline.runner import PlannedStage, plan_run
from labelgen.pipeline.stage import output_path
from labelgen.pipeline.status import last_recipe


@dataclass(frozen=True)
class ReviewRun:
    run_dir: Path
    recipe: Recipe
    plan: dict[str, PlannedStage]

    @property
    def train_split(self) -> str:
        return self.recipe["dataset"].train_split

    def _finished(self, stage: str, why: str) -> PlannedStage:
        p = self.plan.get(stage)
        if p is None or not p.artifact.is_complete():
            raise ArtifactError(f"{stage} of {self.run_dir} is not finished ({why}); run `labelgen run {stage}` first")
        return p

    def manifest(self) -> Manifest:
        p = self._finished("index", "review matches images to its manifest")
        return Manifest.load(output_path(p.stage, p.artifact, "manifest"))

    def current_masks(self) -> tuple[str, Path]:
        """(what they are, store) of the train split's masks a person is sent: the decoder's
        predictions where finished, else the pseudo-labels."""
        for stage, name, params in (("predict", "masks", {"split": self.train_split}), ("pseudo_labels", "masks", {})):
            p = self.plan.get(stage)
            if p is not None and p.artifact.is_complete():
                return stage, output_path(p.stage, p.artifact, name, **params)
        raise ArtifactError(f"{self.run_dir} has no finished predict or pseudo_labels; run `labelgen run full` first")

    def per_image(self) -> list[dict[str, str]]:
        """evaluate's per_image.csv rows (the GT-free score of every image)."""
        p = self._finished("evaluate", "review picks images by its per-image GT-free score")
        with output_path(p.stage, p.artifact, "per_image").open(newline="") as f:
            return list(csv.DictReader(f))


def open_run(run_dir: Path) -> ReviewRun:
    """The run in `run_dir` as its last `labelgen run` planned it (`ArtifactError` where none ran)."""
    recipe, _ = last_recipe(run_dir)
    return ReviewRun(run_dir, recipe, {p.stage.name: p for p in plan_run(recipe, run_dir, "full")})
