"""labelgen on a dask cluster it did not start: a real `dask scheduler` and two `dask worker`
processes on 127.0.0.1, attached with --scheduler (plain TCP, and TLS with certificates made here);
the artifacts equal those of a local run, and GPU units land on the worker that declares a GPU."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from labelgen.pipeline.runner import run_pipeline
from labelgen.store.artifact import SHARDS
from labelgen.store.sharded import ImageArrays
from tests.conftest import tiny_recipe
from tests.dask_processes import dask_processes, make_tls_files
from tests.killing import run_cmd


def unit_workers(run_dir: Path, stage: str) -> list[str]:
    """The worker each finished unit of `stage` ran on, from its shard records."""
    return [json.loads(p.read_text())["worker"] for p in sorted(run_dir.glob(f"{stage}/*/{SHARDS}/*.json"))]


def test_run_on_an_existing_cluster_equals_a_local_run(tmp_path, client):
    remote = tmp_path / "remote"
    # w0 declares a GPU (a label: this runs on the CPU), w1 none: units of GPU stages must all land on w0
    with dask_processes(tmp_path / "cluster", [["--resources", "GPU=1"], []]) as address:
        result = subprocess.run(
            [*run_cmd("pseudo_labels", remote), "--scheduler", address], capture_output=True, text=True, timeout=600
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"attaching to the dask scheduler at {address}" in result.stderr
    assert unit_workers(remote, "train_cam") == ["w0"]
    assert set(unit_workers(remote, "export_cams")) == {"w0"} and len(unit_workers(remote, "export_cams")) > 1
    assert set(unit_workers(remote, "pseudo_labels")) <= {"w0", "w1"}
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


def _run(target: str, run_dir: Path, scheduler: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*run_cmd(target, run_dir), "--scheduler", scheduler],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s", **env},
    )


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_tls_scheduler_runs_with_certificates_and_refuses_without(tmp_path):
    from distributed import Client
    from distributed.security import Security

    tls = make_tls_files(tmp_path)
    with dask_processes(tmp_path / "cluster", [["--resources", "GPU=1"], []], tls=tls) as address:
        assert address.startswith("tls://127.0.0.1:")
        run_dir = tmp_path / "run"
        result = _run("index", run_dir, address, tls.env())
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"attaching to the dask scheduler at {address} over TLS" in result.stderr
        assert next(run_dir.glob("index/*/manifest.json")).is_file()
        assert set(unit_workers(run_dir, "index")) <= {"w0", "w1"} and unit_workers(run_dir, "index")

        plain = address.replace("tls://", "tcp://")  # the same port without TLS: no answer, one line
        refused = _run("index", tmp_path / "plain", plain, {})
        assert refused.returncode == 2
        assert (
            errors(refused) == [errors(refused)[0]]
            and f"--scheduler {plain}: no dask scheduler answered" in errors(refused)[0]
        )
        (tmp_path / "other").mkdir()
        other = make_tls_files(tmp_path / "other")  # a certificate the cluster's CA did not sign
        stranger = Security(tls_ca_file=str(tls.ca), tls_client_cert=str(other.cert), tls_client_key=str(other.key))
        with pytest.raises(OSError):  # the scheduler itself refuses it
            Client(address, security=stranger, timeout=5)


@pytest.mark.parametrize("missing", [f"DASK_DISTRIBUTED__COMM__TLS__{k}" for k in ("CA_FILE", "CLIENT__KEY")])
def test_tls_certificate_file_missing_is_one_line_before_any_work(tmp_path, missing):
    tls = make_tls_files(tmp_path)
    env = {**tls.env(), missing: str(tmp_path / "gone.pem")}
    run_dir = tmp_path / "run"
    result = _run("index", run_dir, "tls://127.0.0.1:9", env)
    assert result.returncode == 2
    assert len(errors(result)) == 1 and f"{tmp_path / 'gone.pem'} ({missing}): no such file" in errors(result)[0]
    assert not run_dir.exists()  # refused before the run folder is touched


def test_tls_address_without_settings_is_one_line(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DASK_DISTRIBUTED__COMM__TLS")}
    result = subprocess.run(
        [*run_cmd("index", tmp_path / "run"), "--scheduler", "tls://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean,
    )
    assert result.returncode == 2
    assert (
        len(errors(result)) == 1
        and "distributed.comm.tls.ca-file (DASK_DISTRIBUTED__COMM__TLS__CA_FILE)" in errors(result)[0]
    )
    assert not (tmp_path / "run").exists()
