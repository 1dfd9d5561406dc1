"""Shared fixtures: the real data and weights in ../shared, a tiny demo recipe, a real LocalCluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labelgen.config import load_recipe
from labelgen.models.weights import WEIGHTS_DIR_ENV

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO128 = SHARED / "data" / "coco128"
VOC_MINI = SHARED / "data" / "voc2012-mini"
WEIGHTS = SHARED / "weights"
TINY_RECIPE = Path(__file__).with_name("tiny_demo.toml")


def pytest_configure(config):
    if not (WEIGHTS / "deit_tiny_patch16_224.in1k.safetensors").is_file():
        raise pytest.UsageError(f"tests need the shared DeiT-Tiny weights in {WEIGHTS} (../shared beside the repo)")
    os.environ[WEIGHTS_DIR_ENV] = str(WEIGHTS)


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        yield c


def tiny_recipe(*overrides: str):
    return load_recipe(TINY_RECIPE, overrides)


@pytest.fixture(scope="session")
def tiny_full_run(tmp_path_factory, client) -> Path:
    """The tiny demo through every stage (with GT for every image); shared, read-only for tests."""
    from labelgen.pipeline.runner import run_pipeline

    run_dir = tmp_path_factory.mktemp("full")
    run_pipeline(tiny_recipe(), run_dir, "full", client)
    return run_dir


@pytest.fixture(autouse=True, scope="session")
def _own_state_folder(tmp_path_factory):
    """`labelgen run` remembers the last run folder under $XDG_STATE_HOME: the tests keep theirs out of
    the user's (a `labelgen status` after the suite showed a pytest folder)."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
