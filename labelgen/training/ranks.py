"""A training unit as N data-parallel ranks on N dask workers (torch.distributed: gloo on CPU, NCCL
on CUDA), and the watch that turns a lost worker into one line instead of a hang.

How a stage's one unit becomes N ranks (`run_ranks`):
1. The unit, running on a worker, takes a client of its own (`distributed.worker_client`, which
   secedes its thread so the rank it starts on the same worker can run) and picks N distinct
   workers: those that declare a `GPU` resource where any does, else every worker; its own first.
2. It submits one rank task to each, pinned there (`workers=[address]`, `allow_other_workers=False`).
3. Rendezvous without a fixed port: rank 0 opens torch's `TCPStore` on port 0 of its own worker's
   host (the OS picks a free port; nothing else can take it between choosing and binding) and
   publishes (host, port) through a dask `Variable`; the other ranks read it and join the store.
4. The unit watches the rank futures and the workers: when one rank fails or its worker leaves the
   cluster (a SIGKILL, a lost node), it waits for the others to leave their collective (at most
   `collective_timeout_s`, the process group's timeout, so no thread stays blocked in the worker for
   the rerun to trip on), cancels what is left and raises one line naming the worker and the last
   checkpoint. The runner records the failure and frees the locks; rerunning resumes.

A step's global batch is cut into `shards` equal micro-batches (`Ranks.shards`, the `devices` count
the training started with, kept in its checkpoint); rank r of `world` takes shards r, r + world, ...
and accumulates their gradients. With as many ranks as shards that is plain data parallelism; with
fewer (a rerun after a lost node) the same global batch is computed in fewer processes.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from labelgen.devices import available_cores, rank_device, use_every_core
from labelgen.errors import ConfigError, LabelgenError, RankLostError
from labelgen.store.checkpoint import checkpoint_position

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0  # how often the unit looks at its ranks and their workers
LEAVE_GRACE_S = 30.0  # beyond collective_timeout_s, for a failed rank's peers to unwind and return


@dataclass(frozen=True)
class Ranks:
    """This process's place in a training: rank of world, the shards (micro-batches) a global batch
    is cut into, the torch threads it may use, and its index among the ranks on its host."""

    rank: int = 0
    world: int = 1
    shards: int = 1
    threads: int = 0  # 0: every available core (a training alone on its machine)
    local_rank: int = 0

    @property
    def mine(self) -> tuple[int, ...]:
        """The shard numbers this rank computes at every step."""
        return tuple(range(self.rank, self.shards, self.world))

    @property
    def writer(self) -> bool:
        """Whether this rank writes checkpoints, logs and the model (rank 0)."""
        return self.rank == 0

    def device(self) -> torch.device:
        return rank_device(self.local_rank)


def all_reduce_sum(tensor: torch.Tensor) -> None:
    """Sum `tensor` over the ranks, in place; nothing in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)


def gather(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (picklable objects; a collective every rank must call)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def run_ranks(
    name: str,
    rank_fn: Callable[..., Any],
    args: tuple[Any, ...],
    devices: str,
    batch_size: int,
    timeout_s: float,
    last: Path,
) -> Any:
    """Run `rank_fn(*args, ranks)` as the training's ranks; return rank 0's result.

    `devices` "1" runs one rank here, in the calling process (a dask task or a plain call). Otherwise
    this must run inside a dask task. Raises `ConfigError` when more ranks are asked for than there
    are workers, or "all" gives a count that does not divide the batch; `RankLostError` when a
    rank's worker is lost mid-training; a rank's own exception when it fails."""
    position = checkpoint_position(last)
    saved_shards = position["shards"] if position else None  # a resumed training keeps its shares
    if devices == "1":  # one rank, here; it computes a resumed training's shares one after the other
        shards = saved_shards or 1
        _check_split(name, devices, batch_size, shards)
        use_every_core()
        return rank_fn(*args, Ranks(shards=shards))
    from distributed import get_worker, worker_client

    try:
        own = get_worker().address
    except ValueError:
        raise ConfigError(
            f"{name}.devices={devices} runs ranks on dask workers; call it through `labelgen run` "
            f"(or set {name}.devices=1)"
        ) from None
    with worker_client() as client:
        workers = training_workers(client, own)
        if position is None:
            shards = _check_new_training(name, devices, batch_size, len(workers))
        else:  # a resumed training keeps its shares, on the workers there are
            shards = saved_shards or (len(workers) if devices == "all" else int(devices))
            _check_split(name, devices, batch_size, shards)
        world = min(shards, len(workers))
        if world < shards:
            log.warning(
                "%s: %d worker(s) for a training of %d ranks: continuing on %d, each accumulating up to %d "
                "micro-batches of %d images a step (the same global batch of %d)",
                name, world, shards, world, -(-shards // world), batch_size // shards, batch_size,
            )  # fmt: skip
        chosen = workers[:world]
        hosts = [address_host(a) for a in chosen]
        cores = available_cores()
        ranks = [
            Ranks(r, world, shards, max(1, cores // hosts.count(h)), hosts[:r].count(h)) for r, h in enumerate(hosts)
        ]
        if world == 1:
            use_every_core()
            return rank_fn(*args, ranks[0])
        log.info("%s: %d ranks on %s", name, world, ", ".join(chosen))
        attempt = uuid.uuid4().hex[:8]
        level = logging.getLogger("labelgen").getEffectiveLevel()
        futures = [
            client.submit(
                _rank_main,
                rank_fn,
                args,
                ranks[r],
                f"{name}-rendezvous-{attempt}",
                timeout_s,
                level,
                key=f"{name}-rank{r}-{attempt}",
                workers=[address],
                allow_other_workers=False,
                pure=False,
            )
            for r, address in enumerate(chosen)
        ]
        return _watch(client, futures, chosen, name, last, timeout_s)


def check_devices(name: str, devices: str, batch_size: int, client: Any, last: Path) -> None:
    """Before any work of a run: `devices` against the training workers of `client`'s cluster
    (`training_workers`), as `run_ranks` would find them. A training with a resume state (`last`)
    is not checked: it continues on the workers there are, at the same global batch. Raises
    `ConfigError` for more ranks than workers, or an "all" count that does not divide the batch."""
    if devices == "1" or checkpoint_position(last) is not None:
        return
    _check_new_training(name, devices, batch_size, len(training_workers(client, "")))


def _check_new_training(name: str, devices: str, batch_size: int, workers: int) -> int:
    """The ranks of a training that starts from scratch on `workers` training workers; raises
    `ConfigError` for more ranks than workers, or a batch that does not split into them."""
    wanted = workers if devices == "all" else int(devices)
    if wanted > workers:
        raise ConfigError(
            f"{name}.devices={devices} but the cluster has {workers} training worker(s); "
            f"start more workers or lower {name}.devices"
        )
    _check_split(name, devices, batch_size, wanted)
    return wanted


def _check_split(name: str, devices: str, batch_size: int, shards: int) -> None:
    if batch_size % shards:
        raise ConfigError(
            f"{name}.batch_size={batch_size} does not split into {shards} equal shares "
            f"({name}.devices={devices}); use a multiple of {shards}"
        )


def training_workers(client: Any, own: str) -> list[str]:
    """Addresses of the workers a training may use, the calling worker first: those declaring a GPU
    resource where any does (one rank per GPU worker), else all."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    gpu = [a for a, w in info.items() if w.get("resources", {}).get("GPU", 0) > 0]
    pool = gpu or list(info)
    return sorted(pool, key=lambda a: (a != own, a))


def address_host(address: str) -> str:
    from distributed.comm.addressing import get_address_host

    return get_address_host(address)


def _rank_main(
    rank_fn: Callable[..., Any], args: tuple[Any, ...], ranks: Ranks, rendezvous: str, timeout_s: float, level: int
) -> Any:
    """One rank, on its worker: join the process group, train, leave the group (also on failure)."""
    from distributed import Variable, get_worker

    from labelgen.pipeline.worker_process import prepare_worker_process

    prepare_worker_process(level)
    torch.set_num_threads(ranks.threads)
    device = ranks.device()
    timeout = datetime.timedelta(seconds=timeout_s)
    address = Variable(rendezvous)
    if ranks.rank == 0:
        host = address_host(get_worker().address)
        store = dist.TCPStore(host, 0, ranks.world, is_master=True, timeout=timeout, wait_for_workers=False)
        address.set([host, store.port])
    else:
        host, port = address.get(timeout=timeout_s)
        store = dist.TCPStore(host, port, ranks.world, is_master=False, timeout=timeout)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=ranks.rank, world_size=ranks.world, timeout=timeout)
    try:
        if ranks.rank == 0:
            address.delete()
        return rank_fn(*args, ranks)
    finally:
        dist.destroy_process_group()


def _watch(client: Any, futures: list[Any], workers: list[str], name: str, last: Path, timeout_s: float) -> Any:
    """Wait for the ranks; on the first failed rank or lost worker, let the others leave their
    collective, cancel what remains and raise (see the module docstring)."""
    from distributed import wait

    while True:
        pending = [f for f in futures if not f.done()]
        if not pending:
            break
        with contextlib.suppress(TimeoutError):
            wait(pending, timeout=WATCH_INTERVAL_S, return_when="FIRST_COMPLETED")
        alive = set(client.scheduler_info(n_workers=-1)["workers"])
        lost = [r for r, a in enumerate(workers) if a not in alive and not futures[r].done()]
        if lost or any(f.status in ("error", "cancelled") for f in futures):
            break
    lost = [r for r, a in enumerate(workers) if a not in alive and not futures[r].done()] if pending else []
    if not pending and all(f.status == "finished" for f in futures):
        return futures[0].result()
    others = [f for r, f in enumerate(futures) if r not in lost and not f.done()]
    try:
        wait(others, timeout=timeout_s + LEAVE_GRACE_S)
    except TimeoutError:
        log.warning("%s: %d rank(s) still running after the collective timeout; cancelling them", name, len(others))
    client.cancel([f for f in futures if not f.done()])
    if lost:
        r = lost[0]
        position = checkpoint_position(last)
        where = (
            f"last checkpoint {last} (resumes at epoch {position['next_epoch']}, step {position['next_step']})"
            if position
            else "no checkpoint yet (the rerun starts from the beginning)"
        )
        raise RankLostError(
            f"{name}: worker {workers[r]} (rank {r} of {len(workers)}) was lost mid-training; {where}; "
            "rerun the same command to resume (with fewer workers it continues on fewer ranks, same global batch)"
        )
    errors = [f.exception() for f in futures if f.status == "error"]
    own = [e for e in errors if isinstance(e, LabelgenError)]
    raise (own or errors)[0]
