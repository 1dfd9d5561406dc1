"""The dask client: a LocalCluster sized to this machine, or the scheduler the user already runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import threading
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster
from distributed.security import Security

from labelgen.devices import available_cores, local_gpu_count
from labelgen.errors import ConfigError
from labelgen.pipeline.worker_process import QuietWorkerLogs

log = logging.getLogger(__name__)


class _DropSyncCancelRace(logging.Filter):
    """Ctrl-C that lands while `distributed.utils.sync` is starting a call makes its `cancel`
    callback read a variable not yet assigned (NameError: cannot access free variable 'future'),
    which tornado logs with a traceback after our "interrupted" line. dask's bug, harmless: the
    call is being abandoned anyway (seen in about 1 of 6 interrupted exports)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, NameError) or error.__traceback__ is None:
            return True
        frame = error.__traceback__
        while frame.tb_next is not None:
            frame = frame.tb_next
        code = frame.tb_frame.f_code
        return not (code.co_name == "cancel" and code.co_filename.endswith(os.path.join("distributed", "utils.py")))


_SYNC_CANCEL_RACE = _DropSyncCancelRace()


def _quiet_dask_logs() -> None:
    """dask sets levels on its own loggers at import; keep only its warnings in our output, and
    drop the traceback of its Ctrl-C race (`_DropSyncCancelRace`)."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("distributed", "bokeh", "tornado")):
            logging.getLogger(name).setLevel(logging.WARNING)
    tornado = logging.getLogger("tornado.application")
    if _SYNC_CANCEL_RACE not in tornado.filters:
        tornado.addFilter(_SYNC_CANCEL_RACE)


CLUSTERS = ("local", "local-cuda")


@contextlib.contextmanager
def open_client(scheduler: str | None, workers: int | None, cluster: str = "local") -> Iterator[Client]:
    """Attach to `scheduler` if given; otherwise start a local cluster of worker processes.

    `local`: a LocalCluster, processes not threads (the CRF and image decoding hold the GIL).
    `local-cuda`: dask-cuda's LocalCUDACluster, one worker per GPU, each declaring GPU=1.
    Log records of the `labelgen` loggers on the workers are forwarded to this process.
    """
    _quiet_dask_logs()
    with _client(scheduler, workers, cluster) as client:
        client.forward_logging("labelgen", level=logging.INFO)
        client.register_plugin(QuietWorkerLogs(), name="labelgen-quiet-worker-logs")
        yield client


# dask's own settings for a client's TLS (`distributed.security.Security` reads them from the dask
# config: a YAML file under ~/.config/dask/ or these environment variables). A tls:// scheduler
# requires a client certificate signed by its CA (mutual TLS).
TLS_SETTINGS = {
    "distributed.comm.tls.ca-file": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "distributed.comm.tls.client.cert": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "distributed.comm.tls.client.key": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
}


def scheduler_security(scheduler: str) -> Security | None:
    """The TLS settings to attach to `scheduler` with: dask's own (`distributed.comm.tls.*`) for a
    tls:// address, checked before any work; None for any other address.

    Raises `ConfigError` (one line naming the setting and its file) when a tls:// address lacks the
    CA file or the client certificate, or when one of the files is missing or not a usable PEM
    certificate/key."""
    if not scheduler.startswith("tls://"):
        return None
    names = {key: dask.config.get(key, default=None) for key in TLS_SETTINGS}
    unset = [key for key in ("distributed.comm.tls.ca-file", "distributed.comm.tls.client.cert") if not names[key]]
    if unset:
        how = " and ".join(f"{key} ({TLS_SETTINGS[key]})" for key in unset)
        raise ConfigError(
            f"--scheduler {scheduler}: a tls:// scheduler needs dask's TLS settings; {how} not set: point them "
            "at the CA certificate and this client's certificate (and its key: distributed.comm.tls.client.key)"
        )
    for key, value in names.items():
        if value and not os.path.isfile(value):
            raise ConfigError(f"{key} = {value} ({TLS_SETTINGS[key]}): no such file; give the PEM file's path")
    security = Security(require_encryption=True)
    try:
        security.get_connection_args("client")  # loads the CA, the certificate and its key now
    except (OSError, ssl.SSLError) as e:
        files = ", ".join(f"{key} = {value}" for key, value in names.items() if value)
        raise ConfigError(f"dask's TLS settings ({files}) do not load: {e}; give PEM files of a matching pair") from e
    return security


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None, cluster: str) -> Iterator[Client]:
    if scheduler:
        security = scheduler_security(scheduler)
        log.info("attaching to the dask scheduler at %s%s", scheduler, " over TLS" if security else "")
        try:
            client = Client(scheduler, security=security)
        except OSError as e:  # dask's "Timed out trying to connect ..." after distributed.comm.timeouts.connect
            raise ConfigError(
                f"--scheduler {scheduler}: no dask scheduler answered ({e}); check that it runs and that the address "
                "has its protocol (a scheduler started with TLS certificates answers only tls:// with certificates)"
            ) from e
        with client:
            yield client
        return
    if cluster == "local-cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as e:
            raise ConfigError("--cluster local-cuda needs dask-cuda: pip install 'labelgen[gpu]'") from e
        with (
            LocalCUDACluster(resources={"GPU": 1}, dashboard_address=":0") as cuda_cluster,
            Client(cuda_cluster) as client,
        ):
            log.info("started a LocalCUDACluster: one worker per GPU; dashboard %s", cuda_cluster.dashboard_link)
            yield client
        return
    if cluster != "local":
        raise ConfigError(f"--cluster {cluster!r}; allowed: {', '.join(CLUSTERS)}")
    n_workers = workers or available_cores()
    gpus = local_gpu_count()
    # A LocalCluster gives every worker the same resources, so GPU=1 is declared only when there is
    # one worker per GPU; otherwise GPU tasks run unannotated and share the device(s).
    resources = {"GPU": 1} if gpus and n_workers == gpus else None
    if gpus and resources is None:
        log.info("%d GPU(s) and %d workers: GPU tasks are not pinned (use --workers %d to pin)", gpus, n_workers, gpus)
    with dask.config.set({"distributed.worker.daemon": False}), _workers_ignore_sigint():
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
        try:
            yield client
        except BaseException:  # Ctrl-C or a failed task: stop the workers now, without a warning each
            logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
            raise
        _close_workers(cluster)


WORKER_EXIT_SECONDS = 60  # how long a finished worker may take to exit (torch's teardown) before it is killed


def _close_workers(cluster: LocalCluster) -> None:
    """Close the worker processes of a finished run, giving each time to exit. dask's own close
    kills a worker that has not exited after 4 s with a warning; a worker that ran torch can take
    longer than that to tear down on a busy machine, and the kill is then noise at the end of a
    good run."""

    async def close() -> None:
        await asyncio.gather(*(w.close(timeout=WORKER_EXIT_SECONDS) for w in cluster.workers.values()))

    cluster.sync(close)


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Worker processes started in this block ignore SIGINT (an ignored signal stays ignored in a
    child process). Ctrl-C in a terminal goes to the whole process group; only the driver should
    act on it: it stops the cluster and says what finished, instead of every worker printing a
    KeyboardInterrupt traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings_before = os.environ.get("PYTHONWARNINGS")
    # The worker processes share the resource tracker that the first of them starts. After Ctrl-C a
    # worker still running a training is stopped; the tracker then removes its loader queues'
    # semaphores, as it should, but also warns once about "leaked semaphore objects": noise here.
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [warnings_before, "ignore:resource_tracker:UserWarning"]))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if warnings_before is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = warnings_before


def workers_have_gpus(client: Client) -> bool:
    info = client.scheduler_info()["workers"]
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in info.values())
