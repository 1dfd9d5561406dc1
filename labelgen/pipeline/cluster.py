"""The dask client: a LocalCluster sized to this machine, or the scheduler the user already runs."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

log = logging.getLogger(__name__)


def local_gpu_count() -> int:
    import torch  # imported here: the CLI stays fast for commands that need no model

    return torch.cuda.device_count()


def _quiet_dask_logs() -> None:
    """dask sets levels on its own loggers at import; keep only its warnings in our output."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("distributed", "bokeh", "tornado")):
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def open_client(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """Attach to `scheduler` if given; otherwise start a LocalCluster of worker processes.

    Processes, not threads: the CRF and the image decoding hold the GIL. On a machine with GPUs the
    workers declare a `GPU` resource so that GPU tasks land one per device.
    """
    _quiet_dask_logs()
    if scheduler:
        log.info("attaching to the dask scheduler at %s", scheduler)
        with Client(scheduler) as client:
            yield client
        return
    n_workers = workers or os.cpu_count() or 1
    gpus = local_gpu_count()
    # A LocalCluster gives every worker the same resources, so GPU=1 is declared only when there is
    # one worker per GPU; otherwise GPU tasks run unannotated and share the device(s).
    resources = {"GPU": 1} if gpus and n_workers == gpus else None
    if gpus and resources is None:
        log.info("%d GPU(s) and %d workers: GPU tasks are not pinned (use --workers %d to pin)", gpus, n_workers, gpus)
    with dask.config.set({"distributed.worker.daemon": False}):  # workers may start data-loader processes
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            resources=resources,
            dashboard_address=":0",
            silence_logs=logging.WARNING,
        )
    log.info("started a LocalCluster with %d worker process(es); dashboard %s", n_workers, cluster.dashboard_link)
    with cluster, Client(cluster) as client:
        yield client


def workers_have_gpus(client: Client) -> bool:
    info = client.scheduler_info()["workers"]
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in info.values())
