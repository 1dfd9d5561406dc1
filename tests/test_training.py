"""The training loop shared by train_cam and train_decoder: checkpoints inside an epoch (a real
SIGKILL mid-epoch, then a resume that must start at the next step and end bit-exact), data-parallel
ranks on a real LocalCluster with gloo (the same weights as one process at the same global batch),
and a lost rank's worker (slow)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from labelgen.config import DatasetParams
from labelgen.data.manifest import Manifest
from labelgen.errors import ConfigError, LabelgenError, RankLostError
from labelgen.stages.train_cam import CamTraining
from labelgen.stages.train_decoder import DecoderTraining, train_decoder
from labelgen.store.checkpoint import checkpoint_position, load_checkpoint
from labelgen.training.loop import LAST, LOG
from tests.conftest import tiny_recipe
from tests.test_train_cam import _train

STEPS_PER_EPOCH = 3  # the tiny demo: 24 train images, train_cam.batch_size 8


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The tiny demo data set, indexed: <root>/index/manifest.json, masks in <root>/masks."""
    from labelgen.data.demo import generate_demo
    from labelgen.pipeline.indexing import index_dataset

    root = tmp_path_factory.mktemp("demo")
    params: DatasetParams = tiny_recipe()["dataset"]
    generate_demo(root, params)
    index_dataset(params, root, root / "index")
    return root


@contextlib.contextmanager
def counted(cls, die_at: int | None = None):
    """Count calls of `cls.loss` (one a micro-batch); with `die_at`, SIGKILL this process at that call."""
    calls = []
    original = cls.loss

    def loss(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    cls.loss = loss
    try:
        yield calls
    finally:
        cls.loss = original


def train_then_die(out: str, manifest: str, die_at: int, *overrides: str) -> None:
    """Run in a subprocess: train_cam, killed by a real SIGKILL at the `die_at`-th step."""
    with counted(CamTraining, die_at):
        _train(Path(out), Path(manifest), 2, *overrides)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_killed_mid_epoch_resumes_at_the_next_step_with_identical_weights(tmp_path, demo):
    """Checkpoint every step; a SIGKILL at the 5th step (epoch 1, step 1) leaves the checkpoint after
    step 0 of epoch 1; the rerun runs exactly the 2 steps left and ends bit-exact."""
    manifest = demo / "index" / "manifest.json"
    straight = tmp_path / "straight"
    straight.mkdir()
    _train(straight, manifest, 2)  # no mid-epoch checkpoints: writing one must not change the training
    killed = tmp_path / "killed"
    killed.mkdir()
    code = f"from tests.test_training import train_then_die; train_then_die({str(killed)!r}, {str(manifest)!r}, 5, "
    code += "'train_cam.checkpoint_every_steps=1')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    saved = load_checkpoint(killed / LAST)
    assert (saved["epoch"], saved["next_step"]) == (0, 1) and len(saved["rng"]) == 1
    with counted(CamTraining) as calls:
        _train(killed, manifest, 2, "train_cam.checkpoint_every_steps=1")
    assert len(calls) == 2 * STEPS_PER_EPOCH - 4  # steps 1 and 2 of epoch 1: nothing before ran again
    assert_same_weights(straight / "model.pt", killed / "model.pt")
    log_straight = [json.loads(x) for x in (straight / LOG).read_text().splitlines()]
    log_killed = [json.loads(x) for x in (killed / LOG).read_text().splitlines()]
    assert log_killed[0] == saved["history"][0]  # the first run's entry, kept (its own "seconds")
    for a, b in zip(log_straight, log_killed, strict=True):  # the interrupted epoch's sums were saved too
        assert {k: v for k, v in a.items() if k.startswith("loss_")} == {
            k: v for k, v in b.items() if k.startswith("loss_")
        }


def decoder_recipe(demo: Path, *overrides: str):
    """train_decoder on the demo's GT masks without per-rank randomness or per-micro-batch statistics:
    no dropout, no drop-path, no gradient clipping (its window statistics are per micro-batch), in
    fp32 (bf16 autocast rounds a batch of 2 and of 4 differently)."""
    return tiny_recipe(
        f"train_decoder.masks={demo / 'masks'}",
        "train_decoder.precision=fp32",
        "train_decoder.decoder_dropout=0.0",
        "train_decoder.drop_path=0.0",
        "train_decoder.gradient_clipping=false",
        *overrides,
    )


def run_decoder(recipe, demo: Path, out: Path, client=None, manifest: Path | None = None):
    out.mkdir(parents=True, exist_ok=True)
    p, dataset = recipe["train_decoder"], recipe["dataset"]
    args = (p, dataset, manifest or demo / "index" / "manifest.json", str(demo / "masks"), out)
    if client is None:
        return train_decoder(*args)
    return client.submit(train_decoder, *args, pure=False).result()


def assert_close_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst <= atol, f"largest weight difference {worst:g} > {atol:g}"


def test_two_ranks_on_two_workers_equal_one_process_at_the_same_global_batch(tmp_path, demo, client):
    """gloo, 2 dask worker processes, global batch 8 (4 images a rank), 1 epoch of 3 steps: the
    weights of 1 process to float tolerance; rank 0 alone writes; the log says 2 ranks."""
    recipe = decoder_recipe(demo, "train_decoder.batch_size=8")
    run_decoder(recipe, demo, tmp_path / "one")
    ranked = decoder_recipe(demo, "train_decoder.batch_size=8", "train_decoder.devices=2")
    files, info = run_decoder(ranked, demo, tmp_path / "two", client)
    assert files == [tmp_path / "two" / "model.pt"]
    entries = [json.loads(x) for x in (tmp_path / "two" / LOG).read_text().splitlines()]
    assert [e["ranks"] for e in entries] == [2] and all(e["communication_s"] > 0 for e in entries)
    trained = weights(tmp_path / "one" / "model.pt")
    start = initial_weights(recipe, demo)
    moved = max(float((trained[k] - start[k]).abs().max()) for k in trained)
    assert moved > 1e-3  # the training moved the weights far more than the tolerance below
    assert_close_weights(tmp_path / "one" / "model.pt", tmp_path / "two" / "model.pt", 1e-5)


def initial_weights(recipe, demo: Path) -> dict[str, torch.Tensor]:
    """The decoder's weights before training (the same seeded build)."""
    manifest = Manifest.load(demo / "index" / "manifest.json")
    stage = DecoderTraining(recipe["train_decoder"], recipe["dataset"], manifest, "", {})
    return stage.build(torch.device("cpu")).model.state_dict()


def test_ranks_refuse_a_batch_that_does_not_split_before_any_work():
    split = r"\[train_decoder\] batch_size: 4: the global batch must split into train_decoder.devices=3"
    with pytest.raises(ConfigError, match=split):
        tiny_recipe("train_decoder.devices=3")
    with pytest.raises(ConfigError, match=r"--set train_cam.devices=0: '0': expected a count of ranks"):
        tiny_recipe("train_cam.devices=0")


def test_more_ranks_than_workers_is_a_clear_error(tmp_path, demo, client):
    recipe = decoder_recipe(demo, "train_decoder.devices=4")
    with pytest.raises(ConfigError, match=r"train_decoder.devices=4 but the cluster has 2 training worker"):
        run_decoder(recipe, demo, tmp_path / "four", client)


def test_more_ranks_than_workers_is_refused_by_a_run_before_any_stage_starts(tmp_path, client):
    """Both trainings ask for 4 ranks on a cluster of 2 workers: one run refuses both at once, once the
    cluster is up and before the index (the first stage) writes anything; its locks are freed."""
    from labelgen.pipeline.runner import plan_run, prepare_run, run_pipeline

    recipe = tiny_recipe("train_cam.devices=4", "train_decoder.devices=4")
    with pytest.raises(LabelgenError) as refused:
        run_pipeline(recipe, tmp_path / "run", "full", client)
    lines = str(refused.value).splitlines()
    assert len(lines) == 2, lines
    assert "train_cam.devices=4 but the cluster has 2 training worker(s)" in lines[0]
    assert "train_decoder.devices=4 but the cluster has 2 training worker(s)" in lines[1]
    for p in plan_run(recipe, tmp_path / "run", "full"):
        assert not p.artifact.path.exists(), p.artifact.path
    prepare_run(tiny_recipe(), tmp_path / "run", "full").release()  # no lock left behind


def test_ranks_outside_a_cluster_is_a_clear_error(tmp_path, demo):
    with pytest.raises(ConfigError, match=r"train_decoder.devices=2 runs ranks on dask workers"):
        run_decoder(decoder_recipe(demo, "train_decoder.devices=2"), demo, tmp_path / "x")


@pytest.mark.slow
def test_a_lost_rank_fails_in_bounded_time_naming_worker_and_checkpoint_then_resumes_on_fewer(tmp_path):
    """Through `labelgen run`'s runner: SIGKILL rank 1's worker mid-epoch; the stage fails within the
    collective timeout with one line naming that worker and the last checkpoint; the locks are free
    (the rerun, in this same process, takes them); the rerun on a cluster of one worker resumes (2
    micro-batches a step by accumulation, the same global batch), keeps the finished epochs, and
    ends at the weights of an uninterrupted run to float tolerance."""
    from distributed import Client, LocalCluster

    from labelgen.pipeline.runner import run_pipeline

    run_dir = tmp_path / "run"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        run_pipeline(tiny_recipe(), run_dir, "index", client)  # the demo data and its masks
        demo = run_dir / "data" / "demo"
        overrides = ("train_decoder.epochs=2", "train_decoder.checkpoint_every_steps=1")
        timeout = 120  # s: above a loaded 2-core machine's start of a rank (torch import, weights)
        recipe = decoder_recipe(
            demo, *overrides, "train_decoder.devices=2", f"train_decoder.collective_timeout_s={timeout}"
        )
        pids = client.run(os.getpid)
        errors: list[BaseException] = []
        thread = threading.Thread(
            target=_catching, args=(errors, run_pipeline, recipe, run_dir, "train_decoder", client)
        )
        thread.start()
        deadline = time.time() + 600
        while (
            not list(run_dir.glob("train_decoder/*/last.pt"))
            or checkpoint_position(next(run_dir.glob("train_decoder/*/last.pt")))["next_step"] < 2
        ):
            assert time.time() < deadline and thread.is_alive(), errors
            time.sleep(0.2)
        last = next(run_dir.glob("train_decoder/*/last.pt"))
        rank0 = client.run_on_scheduler(unit_worker, prefix="train_decoder-0-")
        rank1 = next(w for w in pids if w != rank0)  # the unit's worker runs rank 0, the other rank 1
        killed_at = time.time()
        os.kill(pids[rank1], signal.SIGKILL)
        thread.join(timeout=timeout + 120)
        assert not thread.is_alive() and time.time() - killed_at < timeout + 60
    (error,) = errors
    assert isinstance(error, RankLostError) and "\n" not in str(error)
    assert f"worker {rank1} (rank 1 of 2)" in str(error) and f"last checkpoint {last}" in str(error)
    position = checkpoint_position(last)
    assert position["shards"] == 2 and (position["next_epoch"], position["next_step"]) != (2, 0)
    kept = load_checkpoint(last)["history"]  # the epochs the first run finished: the rerun keeps them
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        run_pipeline(recipe, run_dir, "train_decoder", client)  # LockHeldError if the locks were kept
    entries = [json.loads(x) for x in last.with_name(LOG).read_text().splitlines()]
    assert len(entries) == 2 and entries[-1].get("ranks") is None  # the rerun: one rank, two shares
    assert entries[: len(kept)] == kept
    manifest = next(run_dir.glob("index/*/manifest.json"))
    run_decoder(decoder_recipe(demo, *overrides), demo, tmp_path / "straight", manifest=manifest)
    assert_close_weights(tmp_path / "straight" / "model.pt", last.with_name("model.pt"), 1e-5)


def unit_worker(prefix: str, dask_scheduler=None) -> str:
    """On the scheduler: the worker running the task whose key starts with `prefix`."""
    (task,) = [t for k, t in dask_scheduler.tasks.items() if str(k).startswith(prefix) and t.processing_on]
    return task.processing_on.address


def _catching(errors: list[BaseException], fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001  the test inspects it
        errors.append(e)
