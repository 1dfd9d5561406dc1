"""Runs a target stage and everything upstream of it, skipping what is already done.

Stages run in DAG order; inside a stage every missing unit is one dask task, so shards run in
parallel across workers. (A stage's shard count comes from the manifest, which is only known once
`index` has run; that is why the graph is built stage by stage rather than all at once.)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client

from labelgen.config import Recipe, significant_params
from labelgen.errors import ArtifactError, ConfigError, LabelgenError
from labelgen.pipeline.cluster import workers_have_gpus
from labelgen.pipeline.dag import STAGES, stage_inputs, stages_for
from labelgen.pipeline.executor import run_units
from labelgen.pipeline.indexing import known_classes
from labelgen.pipeline.stage import Stage, StageContext, written_outputs
from labelgen.store.artifact import PLAN_FILE, Artifact, ArtifactLock, stage_key, write_json_atomic
from labelgen.store.runs import RUN_RECORD, remember_last_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    artifact: Artifact
    params: Any
    key_params: dict[str, Any]
    inputs: dict[str, Artifact]


def plan_run(recipe: Recipe, run_dir: Path, target: str) -> list[PlannedStage]:
    """Resolve the key of every stage the target needs, upstream first. Pure: touches no files."""
    names = stages_for(target, recipe, run_dir)
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


def stages_to_compute(plan: list[PlannedStage], force: tuple[str, ...]) -> tuple[list[PlannedStage], set[str]]:
    """(the stages a run computes, in DAG order; the names --force redoes: each named stage and its
    dependants). Raises `ConfigError` for a --force name that is not part of the run."""
    names = [p.stage.name for p in plan]
    forced: set[str] = set()
    for name in force:
        if name not in names:
            raise ConfigError(f"--force {name}: not part of this run ({', '.join(names)})")
        forced |= descendants(name, plan)
    return [p for p in plan if p.stage.name in forced or not p.artifact.is_complete()], forced


@dataclass
class PreparedRun:
    """A run whose checks passed and whose artifacts are locked, ready for a cluster: everything
    `labelgen run` can refuse is refused before a cluster starts or a file of the run changes."""

    recipe: Recipe
    run_dir: Path
    target: str
    plan: list[PlannedStage]
    todo: list[PlannedStage]  # stages to compute, in DAG order
    forced: set[str]
    locks: list[ArtifactLock]
    class_checks_pending: bool  # the class list was unknown before any work: they run after the index

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


def prepare_run(recipe: Recipe, run_dir: Path, target: str, force: tuple[str, ...] = ()) -> PreparedRun:
    """Plan the run, check it, take every lock it needs and record it in `<run>/recipe.json`.

    Raises `ConfigError` for a target or --force name that is not part of the run, `DataError` for a
    missing data root, and `LockHeldError` when another run writes one of the artifacts; in each case
    before anything in the run folder is written."""
    plan = plan_run(recipe, run_dir, target)
    todo, forced = stages_to_compute(plan, force)
    for p in plan:  # a finished input whose output is gone: refused before anything is moved or run
        damage = None if p.stage.name in forced else p.artifact.damage()
        if damage:
            raise ArtifactError(damage)
    for p in todo:
        _log_why_it_reruns(p, run_dir)
    classes = run_classes(recipe, run_dir, plan, todo)
    raise_problems(pre_start_problems(recipe, run_dir, todo, classes))
    locks = [ArtifactLock(p.artifact) for p in todo]
    try:
        for lock in locks:  # all at once, before any work: a second run fails fast and harms nothing
            lock.acquire()
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    record_run(run_dir, recipe, target, plan)
    pending = classes is None and needs_classes(todo)
    return PreparedRun(recipe, run_dir, target, plan, todo, forced, locks, class_checks_pending=pending)


def needs_classes(todo: list[PlannedStage]) -> bool:
    return any(p.stage.class_checks for p in todo)


def run_classes(
    recipe: Recipe, run_dir: Path, plan: list[PlannedStage], todo: list[PlannedStage]
) -> tuple[str, ...] | None:
    """The class list where a stage to compute has class checks and it is known before any work (a
    finished index's manifest is read only then: a COCO one is large)."""
    if not needs_classes(todo):
        return None
    index = next(p.artifact for p in plan if p.stage.name == "index")  # upstream of every stage
    return known_classes(recipe, run_dir, index)


def pre_start_problems(
    recipe: Recipe, run_dir: Path, stages: list[PlannedStage], classes: tuple[str, ...] | None
) -> list[LabelgenError]:
    """What each stage's checks (data root, weights) and, where the class list is known, its class
    checks find wrong, all of them, each once (two stages may need the same weights); run before a
    cluster starts, by a run and by `run --dry-run`."""
    problems: dict[str, LabelgenError] = {}
    for p in stages:
        for check in p.stage.checks:
            _collect(problems, check, recipe, run_dir)
    return list(problems.values()) + class_check_problems(recipe, stages, classes)


def class_check_problems(
    recipe: Recipe, stages: list[PlannedStage], classes: tuple[str, ...] | None
) -> list[LabelgenError]:
    """What each stage's class checks find wrong against `classes`; none while the list is unknown."""
    if classes is None:
        return []
    problems: dict[str, LabelgenError] = {}
    for p in stages:
        for check in p.stage.class_checks:
            _collect(problems, check, recipe, classes)
    return list(problems.values())


def _collect(problems: dict[str, LabelgenError], check: Any, *args: Any) -> None:
    try:
        check(*args)
    except LabelgenError as e:
        problems.setdefault(str(e), e)  # once per message


def raise_problems(problems: list[LabelgenError]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:  # every one at once, one line each, as the settings
        raise LabelgenError("\n".join(str(e) for e in problems))


def _log_why_it_reruns(p: PlannedStage, run_dir: Path) -> None:
    """Where this folder's last run had a finished artifact of the stage under another key, say which
    of its settings (or its data) changed."""
    try:
        last = json.loads((run_dir / RUN_RECORD).read_text()).get("keys", {}).get(p.stage.name)
    except (FileNotFoundError, json.JSONDecodeError):
        return
    before = Artifact(run_dir, p.stage.name, last) if last and last != p.artifact.key else None
    if before is None or not before.is_complete():
        return
    old = before.success().get("params", {})
    changed = sorted(k for k in {*old, *p.key_params} if old.get(k) != json.loads(json.dumps(p.key_params.get(k))))
    inputs_changed = before.success().get("inputs", {}) != {i: a.key for i, a in p.inputs.items()}
    # neither settings nor inputs: the key's other parts, labelgen's version of the stage or artifact schema
    cause = "an upstream stage" if inputs_changed else "labelgen's code for this stage (its version)"
    what = ", ".join("its data" if k == "data" else k for k in changed) or cause
    log.info("stage %-13s reruns: %s changed since the last run in this folder (%s)", p.stage.name, what, before.key)


def record_run(run_dir: Path, recipe: Recipe, target: str, plan: list[PlannedStage]) -> None:
    """`<run>/recipe.json`: the resolved recipe, the target and each stage's key, which `labelgen
    status` reads without importing a model library; and the last-run pointer it defaults to."""
    keys = {p.stage.name: p.artifact.key for p in plan}
    order = list(keys)  # the JSON's keys are sorted: status lists the stages in this, pipeline, order
    record = {"source": recipe.source, "target": target, "keys": keys, "stages": order, **recipe.to_dict()}
    write_json_atomic(run_dir / RUN_RECORD, record)
    remember_last_run(run_dir)


def execute_run(run: PreparedRun, client: Client) -> dict[str, Artifact]:
    """Compute every stage of a prepared run that is not done, on `client`; release its locks.
    Raises the stages' cluster checks' problems (all at once) before any stage starts."""
    try:
        problems: dict[str, LabelgenError] = {}
        for p in run.todo:
            for check in p.stage.cluster_checks:
                _collect(problems, check, run.recipe, p.artifact.path, client)
        raise_problems(list(problems.values()))
        for n, p in enumerate(run.plan):
            if p in run.todo:
                replace = p.stage.name in run.forced and p.artifact.is_complete()
                _run_stage(p, run.recipe, client, replace=replace)
            else:
                log.info("stage %-13s skipped: done at %s", p.stage.name, p.artifact.path)
            if p.stage.name == "index" and run.class_checks_pending:  # COCO's classes: known from here on
                later = [q for q in run.plan[n + 1 :] if q in run.todo]
                classes = known_classes(run.recipe, run.run_dir, p.artifact)
                raise_problems(class_check_problems(run.recipe, later, classes))
    finally:
        run.release()
    return {p.stage.name: p.artifact for p in run.plan}


def run_pipeline(
    recipe: Recipe, run_dir: Path, target: str, client: Client, force: tuple[str, ...] = ()
) -> dict[str, Artifact]:
    """Bring `target` and its upstream stages up to date; return every stage's artifact."""
    return execute_run(prepare_run(recipe, run_dir, target, force), client)


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
    resources = {"GPU": 1} if p.stage.gpu and workers_have_gpus(client) else None
    records = run_units(art, units, client, p.stage.name, resources, kind="stage ")
    compute = _one_precision(p.stage.name, art, records)
    info = p.stage.finalize(ctx, records)
    outputs = written_outputs(p.stage, art)
    elapsed = time.perf_counter() - started
    info = {"seconds": round(elapsed, 2), **info, **({"compute": compute} if compute else {}), "outputs": outputs}
    art.write_success(p.key_params, {k: a.key for k, a in p.inputs.items()}, info)
    log.info("stage %-13s done in %.1fs -> %s", p.stage.name, elapsed, art.path)


def _one_precision(stage: str, art: Artifact, records: list[dict[str, Any]]) -> dict[str, str] | None:
    """The one (device, precision) of a stage's units; `ArtifactError` when resumed shards were
    computed at another precision than the rest (a run moved between a bf16 and an fp32 machine)."""
    seen = {json.dumps(r["compute"], sort_keys=True) for r in records if r.get("compute")}
    if len(seen) > 1:
        kinds = " and ".join(sorted(seen))
        raise ArtifactError(
            f"{stage} in {art.path} holds units computed at different precisions ({kinds}): the results would "
            f"mix; rerun with --force {stage}, or set {stage}.precision to bf16 or fp32 instead of auto"
        )
    return json.loads(seen.pop()) if seen else None
