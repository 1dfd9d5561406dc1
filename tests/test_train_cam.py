"""train_cam resumes from its last checkpoint with exactly the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from labelgen.config import DatasetParams
from labelgen.pipeline.indexing import index_dataset
from labelgen.stages.train_cam import LAST, MODEL, train_cam
from labelgen.store.checkpoint import load_checkpoint
from tests.conftest import tiny_recipe


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from labelgen.data.demo import generate_demo

    root = tmp_path_factory.mktemp("demo")
    params: DatasetParams = tiny_recipe()["dataset"]
    generate_demo(root, params)
    index_dataset(params, root, root / "index")
    return root / "index" / "manifest.json"


def _train(out, manifest, epochs, *overrides):
    recipe = tiny_recipe(f"train_cam.epochs={epochs}", *overrides)
    return train_cam(recipe["train_cam"], recipe["dataset"], manifest, out)


def test_killed_training_resumes_to_identical_weights(tmp_path, manifest):
    straight = tmp_path / "straight"
    straight.mkdir()
    _train(straight, manifest, 3)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    code = (
        f"from tests.test_train_cam import _train; from pathlib import Path; "
        f"_train(Path({str(resumed)!r}), Path({str(manifest)!r}), 3)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env={**os.environ})
    deadline = time.time() + 120
    while not (resumed / LAST).is_file():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / MODEL).is_file() and load_checkpoint(resumed / LAST)["epoch"] < 2
    _train(resumed, manifest, 3)
    a, b = load_checkpoint(straight / MODEL)["model"], load_checkpoint(resumed / MODEL)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed / "log.jsonl").read_text().count("\n") == 3


def test_gt_selection_says_it_used_pixel_labels(tmp_path, manifest):
    recipe = tiny_recipe("train_cam.epochs=1", "train_cam.selection=gt_miou", "train_cam.selection_subset=4")
    _files, info = train_cam(recipe["train_cam"], recipe["dataset"], manifest, tmp_path)
    assert "pixel GT" in info["selection"] and "not weakly supervised" in info["selection"]
    assert info["selection"].startswith("epoch 1 of 1 selected")  # numbered as the epoch log lines are
    assert load_checkpoint(tmp_path / MODEL)["selection"] == info["selection"]


def test_too_small_a_split_is_a_clear_error(tmp_path, manifest):
    from labelgen.errors import DataError

    recipe = tiny_recipe("train_cam.batch_size=64")
    with pytest.raises(DataError, match="fewer than train_cam.batch_size=64"):
        train_cam(recipe["train_cam"], recipe["dataset"], manifest, tmp_path)
