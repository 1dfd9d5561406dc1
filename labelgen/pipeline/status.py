"""`labelgen status`: each stage of a run as done, damaged, running (a run is computing it), queued (a
run will), partial (k of n units), failed, stale or missing.

Reads files only (the run record `<run>/recipe.json` with every stage's key, and the artifact
folders), so it imports neither torch nor a stage: it answers in well under a second. A finished
stage's declared outputs (`Stage.outputs`) are listed in its `_SUCCESS.json`; one of them gone makes
the stage "damaged".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from labelgen.config import STAGE_PARAMS, Recipe, build_params
from labelgen.errors import ArtifactError
from labelgen.store.artifact import PLAN_FILE, SUCCESS, Artifact, ArtifactLock
from labelgen.store.runs import RUN_RECORD


@dataclass(frozen=True)
class StageStatus:
    stage: str
    state: str  # done | damaged | running | queued | partial | failed | stale | missing
    key: str
    path: str
    detail: str


def _run_record(run_dir: Path) -> dict:
    path = run_dir / RUN_RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"{run_dir} holds no run ({path} missing); start one with `labelgen run`") from e
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is damaged ({e}); run `labelgen run` again to rewrite it") from e


def last_recipe(run_dir: Path) -> tuple[Recipe, str]:
    """The resolved recipe and target of the last `labelgen run` in this folder."""
    data = _run_record(run_dir)
    path = run_dir / RUN_RECORD
    sections = {name: build_params(cls, data[name], f"{path} [{name}]") for name, cls in STAGE_PARAMS.items()}
    return Recipe(sections=sections, source=data["source"]), data["target"]


def _stage_keys(run_dir: Path, data: dict) -> dict[str, str]:
    """Each planned stage's key, from the run record (older records lack them: recompute, slowly)."""
    if "keys" in data:
        return data["keys"]
    from labelgen.pipeline.runner import plan_run  # imports every stage and torch

    recipe, target = last_recipe(run_dir)
    return {p.stage.name: p.artifact.key for p in plan_run(recipe, run_dir, target)}


def stage_status(art: Artifact) -> StageStatus:
    """The state of one planned artifact, from its files."""
    row = (art.stage, art.key, str(art.path))
    holder = ArtifactLock(art).holder()  # a run locks every stage it will compute when it starts
    started = (art.path / PLAN_FILE).is_file()
    if holder is not None and (art.is_complete() or not started):  # --force will redo it, or not begun
        return StageStatus(art.stage, "queued", *row[1:], f"the run of {holder} will compute it")
    if art.is_complete():
        gone = art.missing_outputs()
        if gone:
            name, path = gone[0]
            detail = f"output {name} ({path.name}) is missing; rerun with --force {art.stage} added"
            return StageStatus(art.stage, "damaged", *row[1:], detail)
        return StageStatus(art.stage, "done", *row[1:], f"finished {art.success()['finished_at']}")
    if holder is not None:  # a run is computing it now
        return StageStatus(art.stage, "running", *row[1:], f"{_units_done(art)}; being written by {holder}")
    failure = art.failure()
    if failure is not None:
        return StageStatus(art.stage, "failed", *row[1:], f"{failure['unit']}: {failure['error']}")
    if started:
        return StageStatus(art.stage, "partial", *row[1:], _units_done(art))
    others = sorted(d.name for d in art.path.parent.glob("*") if (d / SUCCESS).is_file())
    if others:
        detail = f"outputs for other settings exist: {', '.join(others)}; rerun to update"
        return StageStatus(art.stage, "stale", *row[1:], detail)
    return StageStatus(art.stage, "missing", *row[1:], "not run yet")


def _units_done(art: Artifact) -> str:
    n = json.loads((art.path / PLAN_FILE).read_text())["units"]
    return f"{sum(art.shard_is_recorded(i) for i in range(n))}/{n} units done"  # records, not checksums


def run_status(run_dir: Path) -> list[StageStatus]:
    data = _run_record(run_dir)
    keys = _stage_keys(run_dir, data)
    order = data.get("stages", list(keys))  # pipeline order (records before it had none)
    return [stage_status(Artifact(run_dir, stage, keys[stage])) for stage in order]
