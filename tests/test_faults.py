"""Fault injection with real processes, a real LocalCluster and real files: killed runs and workers,
damaged shards and checkpoints, a full disk, two writers, hostile inputs."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from labelgen.errors import ArtifactError, ConfigError
from labelgen.pipeline.runner import plan_run, run_pipeline
from labelgen.store.artifact import Artifact
from labelgen.store.sharded import ImageArrays
from tests.conftest import tiny_recipe
from tests.killing import kill_when, run_cmd

SHARDS = ("export_cams.shard_size=2",)


@pytest.fixture(scope="module")
def cam_ready(tmp_path_factory, client):
    """A run with train_cam done, and the uninterrupted export_cams beside it for comparison."""
    base = tmp_path_factory.mktemp("faults") / "base"
    run_pipeline(tiny_recipe(*SHARDS), base, "train_cam", client)
    reference = base.with_name("reference")
    shutil.copytree(base, reference)
    run_pipeline(tiny_recipe(*SHARDS), reference, "export_cams", client)
    return base, reference


def cams_equal(a: Path, b: Path) -> bool:
    x, y = ImageArrays(next(a.glob("export_cams/*/cams.zarr"))), ImageArrays(next(b.glob("export_cams/*/cams.zarr")))
    return x.ids == y.ids and all(np.array_equal(x.cam(i)[0], y.cam(i)[0]) for i in range(len(x)))


def test_killed_worker_task_is_retried_and_the_run_completes(cam_ready, tmp_path):
    from distributed import Client, LocalCluster

    base, reference = cam_ready
    run_dir = tmp_path / "run"
    shutil.copytree(base, run_dir)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        errors = []
        thread = threading.Thread(target=lambda: _run_catching(client, run_dir, errors))
        thread.start()
        deadline = time.time() + 120
        while not list(run_dir.glob("export_cams/*/_shards/*.json")):
            assert time.time() < deadline
            time.sleep(0.02)
        os.kill(pids[0], 9)  # one worker dies mid-stage; its nanny restarts it, dask reschedules its task
        thread.join(300)
        assert not errors, errors
    assert cams_equal(run_dir, reference)


def _run_catching(client, run_dir, errors):
    try:
        run_pipeline(tiny_recipe(*SHARDS), run_dir, "export_cams", client)
    except Exception as e:  # reported by the test thread
        errors.append(e)


def test_damaged_shard_is_detected_by_its_checksum_and_redone(cam_ready, tmp_path, client, caplog):
    _, reference = cam_ready
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    art = next(p for p in run_dir.glob("export_cams/*") if p.is_dir())  # not the artifact's .lock file
    (art / "_SUCCESS.json").unlink()  # as if the run had crashed before finishing the stage
    shard = art / "cams.zarr" / "cams" / "c" / "3" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:100])  # a torn write
    with caplog.at_level(logging.INFO, logger="labelgen"):
        run_pipeline(tiny_recipe(*SHARDS), run_dir, "export_cams", client)
    assert any("running 1 of 12 unit(s) (11 already done)" in r.message for r in caplog.records)
    assert cams_equal(run_dir, reference)


def test_damaged_resume_checkpoint_is_never_read_as_valid(tmp_path):
    from tests.test_train_cam import _train

    manifest = tmp_path / "demo"
    from labelgen.data.demo import generate_demo
    from labelgen.pipeline.indexing import index_dataset

    params = tiny_recipe()["dataset"]
    generate_demo(manifest, params)
    index_dataset(params, manifest, manifest / "index")
    out = tmp_path / "train"
    out.mkdir()
    (out / "last.pt").write_bytes(b"PK\x03\x04 torn checkpoint")
    _train(out, manifest / "index" / "manifest.json", 1)
    assert list(out.glob("last.pt.damaged-*")) and (out / "model.pt").is_file()


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_disk(tmp_path):
    """A 200 MB tmpfs; skipped only where this machine does not let the test mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_a_clear_error_and_the_rerun_completes(cam_ready, small_disk, client):
    base, reference = cam_ready
    run_dir = small_disk / "run"
    shutil.copytree(
        base, run_dir, ignore=shutil.ignore_patterns("last.pt")
    )  # the finished training, not its resume state
    train = next(p for p in run_dir.glob("train_cam/*") if p.is_dir())  # not the artifact's .lock file
    model_before = (train / "model.pt").read_bytes()
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (_free_bytes(small_disk) - 300_000))  # room for a few shards, not all
    with pytest.raises(ArtifactError, match="disk full while export_cams wrote"):
        run_pipeline(tiny_recipe(*SHARDS), run_dir, "export_cams", client)
    assert (train / "_SUCCESS.json").is_file() and (train / "model.pt").read_bytes() == model_before
    filler.unlink()
    run_pipeline(tiny_recipe(*SHARDS), run_dir, "export_cams", client)
    assert cams_equal(run_dir, reference)


def test_second_labelgen_run_on_the_same_folder_stops_clearly(cam_ready, tmp_path):
    base, _ = cam_ready
    run_dir = tmp_path / "run"
    shutil.copytree(base, run_dir)
    long_training = "train_cam.epochs=50"  # a new train_cam key: the first run trains for a while
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        first = subprocess.Popen(
            run_cmd("train_cam", run_dir, long_training), start_new_session=True, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        deadline = time.time() + 120
        while "stage train_cam     running" not in log.read_text():
            assert time.time() < deadline and first.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        second = subprocess.run(
            run_cmd("train_cam", run_dir, long_training), capture_output=True, text=True, timeout=120, check=False
        )
        assert second.returncode == 2
        assert "is being written by pid" in second.stderr and "Traceback" not in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


# ------------------------------------------------------------------------------------- hostile inputs
def test_weights_that_are_not_weights(tmp_path):
    from labelgen.models.weights import create_vit

    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a loadable weights file"):
        create_vit("deit_tiny_patch16_224", str(text))

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, evil)  # a pickle that would run code if unpickled freely
    with pytest.raises(ConfigError, match="not a loadable weights file"):
        create_vit("deit_tiny_patch16_224", str(evil))


def test_checkpoint_that_is_not_a_checkpoint(tmp_path):
    from labelgen.store.checkpoint import load_checkpoint

    (tmp_path / "a.pt").write_bytes(pickle.dumps({"model": {}}))
    with pytest.raises(ArtifactError, match="not a readable labelgen checkpoint"):
        load_checkpoint(tmp_path / "a.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "b.pt")
    with pytest.raises(ArtifactError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "b.pt")


def test_a_pickle_where_an_array_is_expected_fails_its_checksum(tmp_path):
    art = Artifact(tmp_path, "evaluate", "k")
    art.path.mkdir(parents=True)
    part = art.path / "part.npy"
    np.save(part, np.zeros((1, 2, 2), np.int64))
    art.write_shard_record(0, [part], {})
    np.save(part, np.array([{"x": 1}], dtype=object), allow_pickle=True)  # swapped for a pickle
    assert not art.shard_is_valid(0)  # so it is recomputed, never loaded


def test_recipe_with_a_wrong_type(tmp_path):
    from labelgen.config import load_recipe

    bad = tmp_path / "bad.toml"
    bad.write_text('[train_cam]\nepochs = "many"\n')
    with pytest.raises(ConfigError, match=r"\[train_cam\] epochs: expected int"):
        load_recipe(bad)


def test_duplicate_ids_and_absolute_paths_outside_the_root(tmp_path):
    from labelgen.config import DatasetParams
    from labelgen.pipeline.indexing import index_dataset
    from tests.badfiles import write_corpus

    root = tmp_path / "data"
    write_corpus(root / "a")
    write_corpus(root / "b")
    outside = write_corpus(tmp_path / "elsewhere")["good.jpg"]
    (root / "classes.txt").write_text("cat\n")
    (root / "tags.csv").write_text(f"image,tags\na/good.jpg,cat\nb/good.jpg,cat\n{outside},cat\n")
    manifest = index_dataset(DatasetParams(name="folder", val_split=""), root, tmp_path / "out")
    problems = json.loads((tmp_path / "out" / "problems.json").read_text())
    assert [r.image for r in manifest.records] == [str((root / "a" / "good.jpg").resolve())]
    assert any("image id 'good' is also the id of" in p["reason"] and "rename one" in p["reason"] for p in problems)
    assert any("outside the data root" in p["reason"] for p in problems)


def test_mask_size_and_values_are_checked_at_index_time(tmp_path):
    from PIL import Image

    from labelgen.config import DatasetParams
    from labelgen.pipeline.indexing import index_dataset

    root = tmp_path / "data"
    (root / "masks").mkdir(parents=True)
    for name, mask in [
        ("small", np.zeros((10, 10), np.uint8)),
        ("values", np.full((40, 48), 7, np.uint8)),
        ("ok", np.ones((40, 48), np.uint8)),
    ]:
        Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(root / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    (root / "classes.txt").write_text("cat\n")
    (root / "tags.csv").write_text("image,tags\nsmall.png,cat\nvalues.png,cat\nok.png,cat\n")
    manifest = index_dataset(DatasetParams(name="folder", val_split=""), root, tmp_path / "out")
    problems = json.loads((tmp_path / "out" / "problems.json").read_text())
    reasons = " ".join(p["reason"] for p in problems)
    by_id = {r.id: r for r in manifest.records}
    assert set(by_id) == {"small", "values", "ok"}  # the tags stand; only the broken GT is not used
    assert by_id["ok"].mask is not None and by_id["small"].mask is None and by_id["values"].mask is None
    assert "is 10×10; they were made for another image" in reasons and "outside the label space" in reasons
    assert [p["action"] for p in problems] == ["kept; GT not scored"] * 2


# ----------------------------------------------------------- SIGKILL in every stage (heavier: marked slow)
@pytest.mark.slow
@pytest.mark.parametrize(
    "stage,evidence",
    [
        ("pseudo_labels", "pseudo_labels/*/_shards/*.json"),
        ("train_decoder", "train_decoder/*/last.pt"),
        ("predict", "predict/*/_shards/*.json"),
        ("evaluate", "evaluate/*/_shards/*.json"),
    ],
)
def test_sigkill_in_each_stage_then_rerun_equals_uninterrupted(stage, evidence, tmp_path, client):
    """Bit for bit on CPU: masks (pseudo_labels, predict), weights (train_decoder), metrics (evaluate)."""
    overrides = (*SHARDS, "predict.shard_size=2", "train_decoder.epochs=3")
    recipe = tiny_recipe(*overrides)
    names = [p.stage.name for p in plan_run(recipe, tmp_path, "full")]
    upstream = names[names.index(stage) - 1]
    reference = tmp_path / "reference"
    run_pipeline(recipe, reference, upstream if upstream != "evaluate" else "predict", client)
    killed = tmp_path / "killed"
    shutil.copytree(reference, killed)
    run_pipeline(recipe, reference, "full", client)
    kill_when(run_cmd("full", killed, *overrides), killed, evidence)
    left = work_left_behind(killed, evidence)
    run_pipeline(recipe, killed, "full", client)
    assert_kept(killed, evidence, left)  # what the killed run finished, the rerun kept
    for pattern in ("pseudo_labels/*/masks.zarr", "predict/*/masks_train.zarr", "predict/*/masks_val.zarr"):
        a, b = ImageArrays(next(reference.glob(pattern))), ImageArrays(next(killed.glob(pattern)))
        assert all(np.array_equal(a.mask(i), b.mask(i)) for i in range(len(a)))
    wa = torch.load(next(reference.glob("train_decoder/*/model.pt")), weights_only=True)["model"]
    wb = torch.load(next(killed.glob("train_decoder/*/model.pt")), weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma = json.loads(next(reference.glob("evaluate/*/metrics.json")).read_text())
    mb = json.loads(next(killed.glob("evaluate/*/metrics.json")).read_text())
    assert ma == mb


def work_left_behind(run_dir: Path, evidence: str) -> list:
    """What a killed run finished, which the rerun must keep (deterministic work redone would give the
    same results, so equal results alone do not show a resume): each finished shard's record file
    with its modification time, or a training's finished epochs (their log entries, timings included)."""
    if evidence.endswith("last.pt"):
        return torch.load(next(run_dir.glob(evidence)), weights_only=True)["history"]
    return sorted((str(p), p.stat().st_mtime_ns) for p in run_dir.glob(evidence))


def assert_kept(run_dir: Path, evidence: str, left: list) -> None:
    assert left, "the killed run left nothing to resume from"
    if evidence.endswith("last.pt"):
        log_file = next(run_dir.glob(evidence)).with_name("log.jsonl")
        assert [json.loads(x) for x in log_file.read_text().splitlines()][: len(left)] == left
    else:
        now = dict((str(p), p.stat().st_mtime_ns) for p in run_dir.glob(evidence))
        assert all(now.get(path) == mtime for path, mtime in left)


@pytest.mark.slow
def test_sigkill_during_export_then_rerun(tmp_path, client):
    from tests.killing import labelgen_cmd

    run_dir = tmp_path / "run"
    run_pipeline(tiny_recipe(), run_dir, "pseudo_labels", client)
    out = tmp_path / "voc"
    cmd = labelgen_cmd(
        "export",
        "--run-dir",
        str(run_dir),
        "--what",
        "pseudo_labels",
        "--format",
        "voc",
        "--out",
        str(out),
        "--workers",
        "1",
    )
    kill_when(cmd, out, "SegmentationClass/*.png")
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    stored = ImageArrays(next(run_dir.glob("pseudo_labels/*/masks.zarr")))
    from labelgen.data.masks import read_mask

    assert all(
        np.array_equal(read_mask(out / "SegmentationClass" / f"{i}.png"), stored.mask(n))
        for n, i in enumerate(stored.ids)
    )
