"""The engine's promises, on real stages, a real LocalCluster and real files."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from labelgen.pipeline.runner import plan_run, run_pipeline
from labelgen.pipeline.status import run_status
from labelgen.store.sharded import ImageArrays
from tests.conftest import tiny_recipe
from tests.killing import kill_when, run_cmd


def success_times(run_dir: Path) -> dict[str, float]:
    return {p.parent.parent.name: p.stat().st_mtime for p in run_dir.glob("*/*/_SUCCESS.json")}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, client):
    run_dir = tmp_path_factory.mktemp("run")
    run_pipeline(tiny_recipe(), run_dir, "pseudo_labels", client)
    return run_dir


def test_pseudo_labels_run_reports_cam_and_label_miou(demo_run):
    metrics = json.loads(next(demo_run.glob("evaluate/*/metrics.json")).read_text())
    assert 0.2 < metrics["cams"]["miou"] <= 1.0  # a trained CAM beats chance on the demo shapes
    assert 0.2 < metrics["pseudo_labels"]["miou"] <= 1.0
    assert metrics["cams"]["images"] == 24 and len(metrics["cams"]["sweep"]) == 7
    report = next(demo_run.glob("evaluate/*/report.md")).read_text()
    assert "pseudo_labels" in report and "overlays.png" in report
    assert next(demo_run.glob("evaluate/*/overlays.png")).stat().st_size > 0


def test_second_run_does_no_work(demo_run, client, caplog):
    before = success_times(demo_run)
    with caplog.at_level(logging.INFO, logger="labelgen"):
        run_pipeline(tiny_recipe(), demo_run, "pseudo_labels", client)
    assert success_times(demo_run) == before
    skipped = [r.message for r in caplog.records if "skipped" in r.message]
    assert len(skipped) == 5 and not any("running" in r.message for r in caplog.records)


def test_changing_one_parameter_recomputes_that_stage_and_dependants_only(demo_run, client):
    old = {p.stage.name: p.artifact.key for p in plan_run(tiny_recipe(), demo_run, "pseudo_labels")}
    changed = tiny_recipe("pseudo_labels.bg_threshold=0.5")
    new = {p.stage.name: p.artifact.key for p in plan_run(changed, demo_run, "pseudo_labels")}
    assert [s for s in old if old[s] != new[s]] == ["pseudo_labels", "evaluate"]
    assert (
        plan_run(tiny_recipe("export_cams.batch_size=1"), demo_run, "pseudo_labels")[2].artifact.key
        == old["export_cams"]
    )
    before = success_times(demo_run)
    run_pipeline(changed, demo_run, "pseudo_labels", client)
    after = success_times(demo_run)
    for stage in ("index", "train_cam", "export_cams"):
        assert after[stage] == before[stage]
    assert len(list(demo_run.glob("pseudo_labels/*/_SUCCESS.json"))) == 2  # the old output is kept


def test_second_writer_is_refused(demo_run, client):
    from labelgen.errors import LockHeldError
    from labelgen.store.artifact import ArtifactLock

    recipe = tiny_recipe("pseudo_labels.bg_threshold=0.3")
    art = plan_run(recipe, demo_run, "pseudo_labels")[3].artifact
    with ArtifactLock(art), pytest.raises(LockHeldError, match="being written by pid"):  # as if another run held it
        run_pipeline(recipe, demo_run, "pseudo_labels", client)


def test_sigkill_mid_stage_then_rerun_does_only_missing_shards(tmp_path, client, caplog):
    overrides = ("export_cams.shard_size=2",)
    uninterrupted = tmp_path / "a"
    run_pipeline(tiny_recipe(*overrides), uninterrupted, "train_cam", client)
    killed = tmp_path / "b"
    shutil.copytree(uninterrupted, killed)
    kill_when(run_cmd("export_cams", killed, *overrides), killed, "export_cams/*/_shards/*.json")
    assert not list(killed.glob("export_cams/*/_SUCCESS.json"))
    done_before = len(list(killed.glob("export_cams/*/_shards/*.json")))
    assert 0 < done_before < 12
    states = {r.stage: (r.state, r.detail) for r in run_status(killed)}
    assert states["export_cams"] == ("partial", f"{done_before}/12 units done") and states["train_cam"][0] == "done"
    with caplog.at_level(logging.INFO, logger="labelgen"):
        run_pipeline(tiny_recipe(*overrides), killed, "export_cams", client)
    running = next(r.message for r in caplog.records if "export_cams" in r.message and "running" in r.message)
    assert f"running {12 - done_before} of 12 unit(s) ({done_before} already done)" in running
    run_pipeline(tiny_recipe(*overrides), uninterrupted, "export_cams", client)
    a = ImageArrays(next(uninterrupted.glob("export_cams/*/cams.zarr")))
    b = ImageArrays(next(killed.glob("export_cams/*/cams.zarr")))
    assert a.ids == b.ids
    for i in range(len(a)):
        (ma, la), (mb, lb) = a.cam(i), b.cam(i)
        assert np.array_equal(ma, mb) and np.array_equal(la, lb)


def test_resolved_precision_is_recorded_and_never_mixed(demo_run, client, tmp_path):
    from labelgen.errors import ArtifactError
    from labelgen.models.precision import native_bf16

    expected = {"device": "cpu", "precision": "bf16" if native_bf16("cpu") else "fp32"}
    art = plan_run(tiny_recipe(), demo_run, "export_cams")[2].artifact
    records = [json.loads(p.read_text()) for p in sorted((art.path / "_shards").glob("*.json"))]
    assert records and all(r["compute"] == expected for r in records)
    assert art.success()["compute"] == expected
    assert "compute" not in json.loads(next((demo_run / "index").glob("*/_shards/*.json")).read_text())
    moved = tmp_path / "run"
    shutil.copytree(demo_run, moved)
    art = plan_run(tiny_recipe(), moved, "export_cams")[2].artifact
    (art.path / "_SUCCESS.json").unlink()
    first = art.path / "_shards" / "000000.json"
    other = {"device": "cuda", "precision": "bf16"}  # as if shard 0 had been made on a GPU machine
    first.write_text(json.dumps({**json.loads(first.read_text()), "compute": other}))
    with pytest.raises(ArtifactError, match="computed at different precisions"):
        run_pipeline(tiny_recipe(), moved, "export_cams", client)
