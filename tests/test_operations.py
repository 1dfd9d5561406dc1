"""Issue 13, operating labelgen: logs that reach the user, clean interrupts and failures, checks
before a cluster starts, a quick status. Real `labelgen` processes on the tiny demo recipe."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from labelgen.cli import main
from labelgen.config import load_recipe, recipe_path, recipe_warnings
from labelgen.store.artifact import PLAN_FILE, Artifact, ArtifactLock
from tests.conftest import TINY_RECIPE, WEIGHTS
from tests.killing import labelgen_cmd


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "LABELGEN_WEIGHTS_DIR": str(WEIGHTS), "XDG_STATE_HOME": str(tmp_path / "state"), **extra}


def _run(tmp_path: Path, run_dir: Path, target: str, *sets: str, env=None) -> subprocess.CompletedProcess:
    cmd = labelgen_cmd(
        "run", target, "--dataset", "demo", "--recipe", str(TINY_RECIPE), "--run-dir", str(run_dir), "--workers", "1"
    )
    cmd += [f"--set={s}" for s in sets]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or _env(tmp_path), timeout=600)


def test_user_error_in_a_task_is_one_line_and_status_says_failed(tmp_path):
    run_dir = tmp_path / "run"
    failed = _run(tmp_path, run_dir, "train_cam", "train_cam.batch_size=64")  # 24 train images
    assert failed.returncode == 2
    error_lines = [ln for ln in failed.stderr.splitlines() if ln.startswith("error: ")]
    assert error_lines == [
        "error: train split 'train' has 24 images, fewer than train_cam.batch_size=64; lower the batch size"
    ]
    assert "Traceback" not in failed.stderr and "Compute Failed" not in failed.stderr
    status = subprocess.run(
        labelgen_cmd("status", "--json"), capture_output=True, text=True, env=_env(tmp_path), timeout=60
    )  # no --run-dir: the last run folder used
    rows = {r["stage"]: r for r in json.loads(status.stdout)}
    assert rows["index"]["state"] == "done"
    assert rows["train_cam"]["state"] == "failed"
    assert "DataError: train split 'train' has 24 images" in rows["train_cam"]["detail"]


def test_worker_logs_reach_the_console_and_a_run_ends_quietly(tmp_path):
    run_dir = tmp_path / "run"
    done = _run(tmp_path, run_dir, "train_cam")
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    assert "train_cam: epoch 1/2 loss cls" in err and "train_cam: epoch 2/2" in err  # logged on the worker
    assert f"loading deit_tiny_patch16_224 weights from {WEIGHTS}" in err
    assert "precision=auto on cpu" in err
    assert "still alive" not in err and "Traceback" not in err and "leaked semaphore" not in err


def _interrupt_when(proc: subprocess.Popen, ready, what: str) -> str:
    """Send Ctrl-C (SIGINT to the whole process group, as a terminal does) once `ready()` is true;
    return the process's stderr. Its stderr is read all along, so a full pipe never stalls it."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.time() + 300
    while not ready("".join(lines)):
        assert proc.poll() is None, f"the run ended before {what}: " + "".join(lines)[-2000:]
        assert time.time() < deadline, f"no {what} within 300 s"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=300)  # stopping a training worker took over 120 s at load 12 on 2 cores
    reader.join(timeout=60)
    return "".join(lines)


# In the slow suite (about a minute: two cluster starts and trainings). On a 2-core machine at load 12
# it once ran past 300 s; measured since on the same command (SIGINT once it trains), the stop took
# 6.0 s idle and 6.1 s beside ten busy processes, so the time went to starting and resuming under that
# load, not to stopping (`pytest -m slow tests/test_operations.py`).
@pytest.mark.slow
def test_ctrl_c_stops_quietly_and_says_how_to_resume(tmp_path):
    # The training never ends on its own (a tiny epoch takes well under a second on a fast machine,
    # which once finished 4 epochs before the signal landed): both runs are interrupted.
    run_dir = tmp_path / "run"
    cmd = labelgen_cmd(
        "run", "train_cam", "--dataset", "demo", "--recipe", str(TINY_RECIPE), "--run-dir", str(run_dir),
        "--set=train_cam.num_workers=1", "--set=train_cam.epochs=100000",
    )  # fmt: skip

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=_env(tmp_path), start_new_session=True)

    proc = start()  # interrupted mid-training, its loader process running
    err = _interrupt_when(proc, lambda _: bool(list(run_dir.glob("train_cam/*/last.pt"))), "first epoch")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "still alive" not in err and "leaked semaphore" not in err
    assert "CancelledError" not in err  # dask's warning for the training task it cancels on close
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted; finished work is kept (done: index; partly done: train_cam (0/1 units))")
    assert last.endswith(f"resume with: labelgen {' '.join(cmd[3:])}")
    key = next(run_dir.glob("train_cam/*/last.pt")).parent.name
    with ArtifactLock(Artifact(run_dir, "train_cam", key)):  # the lock was released
        pass
    resumed = start()  # the same command resumes from the last finished epoch
    resumed_epoch = re.compile(r"resuming after epoch \d+ .*train_cam: epoch", re.S)
    err = _interrupt_when(resumed, lambda text: bool(resumed_epoch.search(text)), "resumed epoch")
    assert resumed.returncode == 130 and re.search(r"train_cam: resuming after epoch \d+ from ", err), err[-2000:]
    after = int(re.search(r"resuming after epoch (\d+)", err).group(1))
    assert f"train_cam: epoch {after + 2}/100000" in err  # it went on from there


# Slow suite: in one of three runs (a clean-clone CI run at load ~4) the interrupted export did not
# exit within 300 s while its shard stayed queued behind the held worker; twice it exited at once.
# Open: where the driver waits after Ctrl-C when its scheduler cannot start its shard (a remote
# scheduler with busy workers), see the issue note.
@pytest.mark.slow
def test_ctrl_c_in_an_export_stops_quietly_and_the_same_command_resumes(tmp_path, tiny_full_run):
    """Ctrl-C while an export's shard is queued: exit 130, one line saying what is kept and the
    command that resumes; no traceback, no KeyboardInterrupt or CancelledError from dask's exit
    handlers. The same command then exports everything.

    The tiny export takes a tenth of a second once it has workers, less than it takes to react to
    its log; so it runs on a scheduler of this test (`--scheduler`) whose one worker is held by a
    task waiting on a dask Event: the shard cannot start until the test sets the event, and Ctrl-C
    lands while the export waits for it, however busy the machine."""
    from distributed import Client, Event, LocalCluster

    out = tmp_path / "exported"
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        release = Event("release-the-worker", client=client)
        holder = client.submit(lambda: Event("release-the-worker").wait(600), pure=False)
        cmd = labelgen_cmd(
            "export", "--run-dir", str(tiny_full_run), "--what", "pseudo_labels", "--format", "yolo",
            "--out", str(out), "--scheduler", cluster.scheduler_address,
        )  # fmt: skip
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=_env(tmp_path), start_new_session=True)
        try:
            err = _interrupt_when(proc, lambda text: "running 1 of 1 unit(s)" in text, "export start")
        finally:  # an export that did not stop is killed with its group, by pid, even when the test fails
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
        assert not list(out.glob("masks/train/*.png"))  # nothing was exported before the signal
        release.set()
        assert holder.result(timeout=60) is True
        assert proc.returncode == 130, err[-2000:]
        for noise in ("Traceback", "KeyboardInterrupt", "CancelledError", "Exception ignored"):
            assert noise not in err, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("interrupted; finished shards are kept and not rewritten; resume with: labelgen export")
        again = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert again.returncode == 0 and f"-> {out}" in again.stdout, again.stderr[-2000:]
    assert len(list((out / "images" / "train").iterdir())) == 24


def test_refused_second_run_leaves_the_run_folder_alone(tmp_path, client):
    from labelgen.pipeline.runner import plan_run, run_pipeline
    from tests.conftest import tiny_recipe

    run_dir = tmp_path / "run"
    run_pipeline(tiny_recipe(), run_dir, "index", client)
    record = run_dir / "recipe.json"
    before = (record.read_bytes(), record.stat().st_mtime_ns)
    art = plan_run(tiny_recipe(), run_dir, "train_cam")[1].artifact
    with ArtifactLock(art):  # another run is training
        result = CliRunner().invoke(
            main,
            ["run", "train_cam", "--dataset", "demo", "--recipe", str(TINY_RECIPE), "--run-dir", str(run_dir)],
        )
    assert result.exit_code == 2 and "is being written by pid" in result.output
    assert "started a LocalCluster" not in result.output
    assert (record.read_bytes(), record.stat().st_mtime_ns) == before
    assert not art.path.exists()


def test_status_says_which_stage_a_run_is_computing_now(tmp_path, client):
    from labelgen.pipeline.runner import prepare_run, run_pipeline
    from labelgen.pipeline.status import run_status
    from tests.conftest import tiny_recipe

    run_dir = tmp_path / "run"
    run_pipeline(tiny_recipe(), run_dir, "index", client)
    running = prepare_run(tiny_recipe(), run_dir, "train_cam")  # recorded and locked: as a run about to train
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    art = running.todo[0].artifact
    try:
        states = {r.stage: (r.state, r.detail) for r in run_status(run_dir)}
        assert states["index"][0] == "done"
        assert states["train_cam"] == ("queued", f"the run of {holder} will compute it")  # locked, not begun
        art.path.mkdir(parents=True)
        (art.path / PLAN_FILE).write_text('{"units": 1, "labels": ["2 epochs"]}')  # as the run writes it: begun
        states = {r.stage: (r.state, r.detail) for r in run_status(run_dir)}
        assert states["train_cam"] == ("running", f"0/1 units done; being written by {holder}")
    finally:
        running.release()
    assert {r.stage: r.state for r in run_status(run_dir)}["train_cam"] == "partial"  # let go: a run stopped


def test_weights_and_data_root_are_checked_before_a_cluster_starts(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    (empty / "deit_tiny_patch16_224.in1k.safetensors").write_bytes(b"x")  # the wrong model for the recipe
    started = time.time()
    result = _run(
        tmp_path,
        tmp_path / "run",
        "full",
        "train_cam.backbone=deit_small_patch16_224",
        'train_cam.weights="hub:deit_small_patch16_224.fb_in1k"',
        env=_env(tmp_path, LABELGEN_WEIGHTS_DIR=str(empty)),
    )
    assert result.returncode == 2 and time.time() - started < 60
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: train_cam.weights: LABELGEN_WEIGHTS_DIR=")
    assert str(empty) in line and "no weights file for deit_small_patch16_224" in line
    assert "it holds deit_tiny_patch16_224.in1k.safetensors" in line
    assert "LocalCluster" not in result.stderr and not (tmp_path / "run" / "index").exists()
    missing = CliRunner().invoke(
        main, ["run", "index", "--dataset", "folder", "--data-root", str(tmp_path / "nope"), "--run-dir", str(tmp_path)]
    )
    assert missing.exit_code == 2 and "is not a folder" in missing.output and "LocalCluster" not in missing.output


def test_hub_weights_offline_are_refused_before_a_cluster_starts(tmp_path):
    """No weights folder, no network, nothing cached: hf_hub_download raises LocalEntryNotFoundError,
    a subclass of the "no such file on the hub" error the check once took as "try the next name"
    and then let the run start (it failed in the training worker after hub retries)."""
    env = {k: v for k, v in _env(tmp_path).items() if k != "LABELGEN_WEIGHTS_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = _run(tmp_path, tmp_path / "run", "train_cam", env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: train_cam.weights=hub:deit_tiny_patch16_224.fb_in1k: cannot reach the timm hub")
    assert "LABELGEN_WEIGHTS_DIR" in line
    assert "LocalCluster" not in result.stderr and not (tmp_path / "run" / "index").exists()


def test_status_imports_no_model_library(tmp_path, client):
    from labelgen.pipeline.runner import run_pipeline
    from tests.conftest import tiny_recipe

    run_dir = tmp_path / "run"
    run_pipeline(tiny_recipe(), run_dir, "index", client)
    code = (
        "import sys; from labelgen.cli import main\n"
        f"try: main(['status', '--run-dir', {str(run_dir)!r}])\n"
        "except SystemExit: pass\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules and 'distributed' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "index" in out.stdout and "done" in out.stdout


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("labelgen, version ")


def test_lr_below_min_lr_is_warned():
    coco = load_recipe(recipe_path("coco"), ["train_cam.batch_size=16"])
    (warning,) = recipe_warnings(coco)
    assert "peak lr base_lr·batch_size/512 = 6.25e-06 is below min_lr=1e-05" in warning
    assert "base_lr ≥ 0.00032" in warning
    assert recipe_warnings(load_recipe(recipe_path("coco"))) == []


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path, client):
    from labelgen.pipeline.runner import run_pipeline
    from tests.conftest import tiny_recipe

    run_dir = tmp_path / "run"
    run_pipeline(tiny_recipe(), run_dir, "index", client)
    files_before = sorted(str(p) for p in run_dir.rglob("*"))
    record = (run_dir / "recipe.json").read_bytes()
    args = ["run", "pseudo_labels", "--dataset", "demo", "--recipe", str(TINY_RECIPE), "--run-dir", str(run_dir)]
    result = CliRunner().invoke(main, [*args, "--dry-run", "--set", "pseudo_labels.bg_threshold=0.5"])
    assert result.exit_code == 0, result.output
    rows = {ln.split()[0]: ln.split()[2:] for ln in result.output.splitlines() if ln.startswith("  ") and "=" not in ln}
    assert rows["index"] == ["skip", "(done)"] and rows["train_cam"] == ["run"] and rows["evaluate"] == ["run"]
    assert "  pseudo_labels.bg_threshold = 0.5 (shipped: 0.43)" in result.output
    assert "  dataset.demo_image_size = 96 (shipped: 192)" in result.output  # the demo reads it
    wrong = CliRunner().invoke(main, [*args, "--dry-run", "--force", "predict"])  # not part of this run, as a run
    assert wrong.exit_code == 2 and "--force predict: not part of this run" in wrong.output
    assert sorted(str(p) for p in run_dir.rglob("*")) == files_before
    assert (run_dir / "recipe.json").read_bytes() == record


def test_an_edited_data_set_makes_a_new_index(tmp_path, client, caplog):
    import logging

    from labelgen.config import load_recipe, recipe_path
    from labelgen.pipeline.indexing import load_manifest
    from labelgen.pipeline.runner import plan_run, run_pipeline
    from tests.realdata import coco_photo

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for n in range(3):
        Image.open(coco_photo((73, 472, 636)[n])).convert("RGB").resize((64, 48)).save(root / "images" / f"{n}.jpg")
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "tags.csv").write_text("image,tags\nimages/0.jpg,cat\nimages/1.jpg,Dog\nimages/2.jpg,dog\n")
    recipe = load_recipe(recipe_path("folder"), [f'dataset.root="{root}"'])
    first = run_pipeline(recipe, tmp_path / "run", "index", client)["index"]
    assert [r.id for r in load_manifest(first).records] == ["0", "2"]
    assert plan_run(recipe, tmp_path / "run", "index")[0].artifact.key == first.key  # nothing changed
    (root / "tags.csv").write_text("image,tags\nimages/0.jpg,cat\nimages/1.jpg,dog\nimages/2.jpg,dog\n")  # fixed
    with caplog.at_level(logging.INFO, logger="labelgen"):
        second = run_pipeline(recipe, tmp_path / "run", "index", client)["index"]
    assert second.key != first.key and [r.id for r in load_manifest(second).records] == ["0", "1", "2"]
    assert any("stage index         reruns: its data changed" in r.message for r in caplog.records)
    Image.open(coco_photo(74)).convert("RGB").resize((64, 48)).save(root / "images" / "2.jpg")  # replaced
    assert plan_run(recipe, tmp_path / "run", "index")[0].artifact.key != second.key


def test_dasks_ctrl_c_race_in_sync_is_not_printed_other_errors_are():
    """distributed.utils.sync's `cancel` reads `future` before it is assigned when Ctrl-C lands early
    (NameError, logged by tornado with a traceback after our "interrupted" line): that record alone
    is dropped. Built from a function named `cancel` compiled under distributed/utils.py's file name,
    as the real one's frame is."""
    import logging

    import distributed.utils

    from labelgen.pipeline.cluster import _quiet_dask_logs

    _quiet_dask_logs()
    tornado = logging.getLogger("tornado.application")
    source = (
        "def outer():\n    future: int\n    def cancel():\n        if future is not None: pass\n    return cancel\n"
    )
    namespace: dict = {}
    exec(compile(source, distributed.utils.__file__, "exec"), namespace)
    records = []
    for fn in (namespace["outer"](), lambda: undefined_name):  # noqa: F821
        try:
            fn()
        except NameError:
            records.append(logging.LogRecord(tornado.name, logging.ERROR, "", 0, "callback", None, sys.exc_info()))
    assert [bool(tornado.filter(r)) for r in records] == [False, True]


def test_random_weights_are_warned_before_any_work():
    """`run` and `--dry-run` log every recipe warning before any work (see `test_lr_below_min_lr_is_warned`)."""
    (warned,) = recipe_warnings(load_recipe(TINY_RECIPE, ["train_cam.weights=none"]))
    assert warned.startswith("train_cam.weights = none: RANDOM initialisation") and "hub:<timm name>" in warned
    assert recipe_warnings(load_recipe(TINY_RECIPE)) == []


def test_a_demo_runs_class_checks_refuse_before_its_data_is_generated(tmp_path):
    """The demo's class list is fixed: a clip_start its 6 labels make useless is refused by --dry-run
    in a fresh run folder (no data generated, no index yet), not deferred with a note."""
    dry = CliRunner().invoke(
        main,
        ["run", "full", "--dataset", "demo", "--recipe", str(TINY_RECIPE), "--run-dir", str(tmp_path / "fresh"),
         "--dry-run", "--set", "train_decoder.clip_start=5"],
    )  # fmt: skip
    assert dry.exit_code == 2 and "train_decoder.clip_start=5 is not below 1.79" in dry.output, dry.output
    assert "not known before its index has run" not in dry.output
