"""Runs a target stage and everything upstream of it, skipping what is already done.

Stages run in DAG order; inside a stage every missing unit is one dask task, so shards run in
parallel across workers. (A stage's shard count comes from the manifest, which is only known once
`index` has run; that is why the graph is built stage by stage rather than all at once.)
"""

from __future__ import annotations

import errno
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client, as_completed
from tqdm import tqdm

from labelgen.config import Recipe, significant_params
from labelgen.errors import ArtifactError, ConfigError
from labelgen.pipeline.cluster import workers_have_gpus
from labelgen.pipeline.dag import STAGES, stage_inputs, stages_for
from labelgen.pipeline.stage import Stage, StageContext, Unit
from labelgen.pipeline.worker_process import prepare_worker_process
from labelgen.store.artifact import Artifact, ArtifactLock, stage_key, write_json_atomic

log = logging.getLogger(__name__)

PLAN_FILE = "_plan.json"


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    artifact: Artifact
    params: Any
    key_params: dict[str, Any]
    inputs: dict[str, Artifact]


def plan_run(recipe: Recipe, run_dir: Path, target: str) -> list[PlannedStage]:
    """Resolve the key of every stage the target needs, upstream first. Pure: touches no files."""
    names = stages_for(target, recipe)
    planned: dict[str, PlannedStage] = {}
    for name in names:
        stage = STAGES[name]
        params = recipe[stage.section]
        inputs = {i: planned[i].artifact for i in stage_inputs(name, names, recipe)}
        key_params = {**significant_params(params), **stage.key_extra(recipe, run_dir)}
        key = stage_key(name, stage.version, key_params, {i: a.key for i, a in inputs.items()})
        planned[name] = PlannedStage(stage, Artifact(run_dir, name, key), params, key_params, inputs)
    return list(planned.values())


def descendants(stage: str, plan: list[PlannedStage]) -> set[str]:
    """`stage` and every planned stage that depends on it, directly or not."""
    out = {stage}
    for p in plan:  # the plan is in DAG order, so one pass suffices
        if any(i in out for i in p.inputs):
            out.add(p.stage.name)
    return out


def run_pipeline(
    recipe: Recipe, run_dir: Path, target: str, client: Client, force: tuple[str, ...] = ()
) -> dict[str, Artifact]:
    """Bring `target` and its upstream stages up to date; return every stage's artifact."""
    plan = plan_run(recipe, run_dir, target)
    names = [p.stage.name for p in plan]
    forced: set[str] = set()
    for name in force:
        if name not in names:
            raise ConfigError(f"--force {name}: not part of this run ({', '.join(names)})")
        forced |= descendants(name, plan)
    write_json_atomic(run_dir / "recipe.json", {"source": recipe.source, "target": target, **recipe.to_dict()})
    todo = [p for p in plan if p.stage.name in forced or not p.artifact.is_complete()]
    locks = [ArtifactLock(p.artifact) for p in todo]
    try:
        for lock in locks:  # all at once, before any work: a second run fails fast and harms nothing
            lock.acquire()
        for p in plan:
            if p in todo:
                _run_stage(p, recipe, client, replace=p.stage.name in forced and p.artifact.is_complete())
            else:
                log.info("stage %-13s skipped: done at %s", p.stage.name, p.artifact.path)
    finally:
        for lock in locks:
            lock.release()
    return {p.stage.name: p.artifact for p in plan}


def _run_stage(p: PlannedStage, recipe: Recipe, client: Client, replace: bool) -> None:
    art = p.artifact
    if replace:  # --force: keep the old output beside the new one, never delete it silently
        kept = art.path.with_name(f"{art.key}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(art.path, kept)
        log.info("stage %-13s forced: previous output moved to %s", p.stage.name, kept)
    art.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(art.path / "recipe.json", recipe.to_dict())
    ctx = StageContext(params=p.params, recipe=recipe, artifact=art, inputs=p.inputs)
    started = time.perf_counter()
    units = p.stage.plan(ctx)
    write_json_atomic(art.path / PLAN_FILE, {"units": len(units), "labels": [u.label for u in units]})
    missing = [u for u in units if not art.shard_is_valid(u.index)]
    log.info(
        "stage %-13s running %d of %d unit(s) (%d already done) -> %s",
        p.stage.name,
        len(missing),
        len(units),
        len(units) - len(missing),
        art.path,
    )
    _execute(client, p.stage, art, missing)
    records = [art.shard_record(u.index) for u in units]
    assert all(r is not None for r in records), "every unit writes its record before returning"
    info = p.stage.finalize(ctx, records)
    elapsed = time.perf_counter() - started
    art.write_success(p.key_params, {k: a.key for k, a in p.inputs.items()}, {"seconds": round(elapsed, 2), **info})
    log.info("stage %-13s done in %.1fs -> %s", p.stage.name, elapsed, art.path)


def _execute(client: Client, stage: Stage, art: Artifact, units: list[Unit]) -> None:
    if not units:
        return
    resources = {"GPU": 1} if stage.gpu and workers_have_gpus(client) else None
    attempt = uuid.uuid4().hex[:8]  # fresh keys: a retry must not get an earlier attempt's (erred) result
    futures = {
        client.submit(run_unit, art, u, key=f"{stage.name}-{u.index}-{attempt}", pure=False, resources=resources): u
        for u in units
    }
    try:
        with tqdm(total=len(units), desc=stage.name, unit="unit", disable=len(units) < 2) as bar:
            for future in as_completed(futures):
                unit = futures[future]
                record = _result(future, stage, art, unit)
                log.info("stage %-13s %s done in %.1fs", stage.name, unit.label, record["seconds"])
                bar.update()
    finally:
        client.cancel(list(futures))  # after a failure, stop the rest rather than let it write on


def _result(future: Any, stage: Stage, art: Artifact, unit: Unit) -> dict[str, Any]:
    try:
        return future.result()  # re-raises the task's exception with its traceback
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise ArtifactError(
            f"disk full while {stage.name} wrote {unit.label} under {art.path} ({e}); free space and "
            "rerun the same command: finished shards and stages are kept"
        ) from e


def run_unit(art: Artifact, unit: Unit) -> dict[str, Any]:
    """Executed on a worker: do the unit's work, then record its completion with checksums."""
    prepare_worker_process()
    started = time.perf_counter()
    files, info = unit.fn(*unit.args)
    info = {"label": unit.label, "seconds": round(time.perf_counter() - started, 3), **info}
    art.write_shard_record(unit.index, files, info)
    return art.shard_record(unit.index)
