"""`labelgen status`: each stage of a run as done, partial (k of n units), stale or missing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from labelgen.config import STAGE_PARAMS, Recipe, build_params
from labelgen.errors import ArtifactError
from labelgen.pipeline.runner import PLAN_FILE, plan_run
from labelgen.store.artifact import SUCCESS


@dataclass(frozen=True)
class StageStatus:
    stage: str
    state: str  # done | partial | stale | missing
    key: str
    path: str
    detail: str


def last_recipe(run_dir: Path) -> tuple[Recipe, str]:
    """The resolved recipe and target of the last `labelgen run` in this folder."""
    path = run_dir / "recipe.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"{run_dir} holds no run ({path} missing); start one with `labelgen run`") from e
    sections = {name: build_params(cls, data[name], f"{path} [{name}]") for name, cls in STAGE_PARAMS.items()}
    return Recipe(sections=sections, source=data["source"]), data["target"]


def run_status(run_dir: Path) -> list[StageStatus]:
    recipe, target = last_recipe(run_dir)
    out = []
    for p in plan_run(recipe, run_dir, target):
        art = p.artifact
        if art.is_complete():
            info = art.success()
            out.append(StageStatus(art.stage, "done", art.key, str(art.path), f"finished {info['finished_at']}"))
            continue
        if (art.path / PLAN_FILE).is_file():
            n = json.loads((art.path / PLAN_FILE).read_text())["units"]
            k = sum(art.shard_is_valid(i) for i in range(n))
            out.append(StageStatus(art.stage, "partial", art.key, str(art.path), f"{k}/{n} units done"))
            continue
        others = sorted(d.name for d in (run_dir / art.stage).glob("*") if (d / SUCCESS).is_file())
        if others:
            detail = f"outputs for other settings exist: {', '.join(others)}; rerun to update"
            out.append(StageStatus(art.stage, "stale", art.key, str(art.path), detail))
        else:
            out.append(StageStatus(art.stage, "missing", art.key, str(art.path), "not run yet"))
    return out
