"""labelgen on a dask cluster it did not start: a real `dask scheduler` and two `dask worker`
processes on 127.0.0.1, attached with --scheduler; the artifacts equal those of a local run."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from labelgen.pipeline.runner import run_pipeline
from labelgen.store.sharded import ImageArrays
from tests.conftest import tiny_recipe
from tests.killing import run_cmd

DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture
def external_cluster(tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            stderr=subprocess.DEVNULL,
        )
    ]
    deadline = time.time() + 60
    while not scheduler_file.is_file():
        assert time.time() < deadline, "the dask scheduler did not start"
        time.sleep(0.1)
    for i in range(2):
        procs.append(
            subprocess.Popen(
                [
                    DASK,
                    "worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--name",
                    f"w{i}",
                ],
                stderr=subprocess.DEVNULL,
            )
        )
    address = json.loads(scheduler_file.read_text())["address"]
    from distributed import Client

    with Client(address) as c:
        c.wait_for_workers(2, timeout=60)
    yield address
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def test_run_on_an_existing_cluster_equals_a_local_run(external_cluster, tmp_path, client):
    remote = tmp_path / "remote"
    result = subprocess.run(
        [*run_cmd("pseudo_labels", remote), "--scheduler", external_cluster],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"attaching to the dask scheduler at {external_cluster}" in result.stderr
    local = tmp_path / "local"
    run_pipeline(tiny_recipe(), local, "pseudo_labels", client)
    wa = torch.load(next(local.glob("train_cam/*/model.pt")), weights_only=True)["model"]
    wb = torch.load(next(remote.glob("train_cam/*/model.pt")), weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    a = ImageArrays(next(local.glob("pseudo_labels/*/masks.zarr")))
    b = ImageArrays(next(remote.glob("pseudo_labels/*/masks.zarr")))
    assert a.ids == b.ids and all(
        np.array_equal(x, y) for x, y in zip(a.rows(0, len(a)), b.rows(0, len(b)), strict=True)
    )
    assert sorted(p.name for p in local.glob("*/*")) == sorted(p.name for p in remote.glob("*/*"))  # same keys
