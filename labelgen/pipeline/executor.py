"""One way to run units of work, for the stages, mask export and `labelgen data index/check`.

A unit (`labelgen.pipeline.stage.Unit`) writes files into a folder that keeps unit records
(`labelgen.store.artifact.UnitRecords`: a stage's `Artifact`, an export's or index's `WorkFolder`).
`run_units` gives every kind of work the same guarantees:

- resume: a unit whose record exists, is the same unit's (its label) and whose files still match
  their checksums is not run again;
- records: each finished unit writes its record (checksums of the files it vouches for, its info,
  where a model unit ran and at which precision) before it counts as done;
- failure: the unit that failed is recorded (`_FAILED.json`, read by `labelgen status`), the units
  still running are cancelled rather than left writing, and a full disk is one line saying what to do;
- progress: a tqdm bar over the units, one log line per finished unit.

Locks are the caller's (`ArtifactLock` over the same folder), taken before a cluster starts, so that
a second writer is refused at once.
"""

from __future__ import annotations

import errno
import logging
import time
import uuid
from typing import Any

from distributed import Client, as_completed
from tqdm import tqdm

from labelgen.errors import ArtifactError
from labelgen.pipeline.stage import Unit
from labelgen.pipeline.worker_process import prepare_worker_process
from labelgen.store.artifact import UnitRecords

log = logging.getLogger(__name__)


def run_units(
    place: UnitRecords,
    units: list[Unit],
    client: Client | None,
    name: str,
    resources: dict[str, int] | None = None,
    kind: str = "",
) -> list[dict[str, Any]]:
    """Run every unit of `units` not yet done in `place`: on `client`'s workers, one dask task each
    (with dask `resources`, e.g. {"GPU": 1}), or in this process, one after the other, when `client`
    is None. Returns every unit's record, in the order of `units`. `name` labels log lines, task
    keys and the progress bar ("train_cam", "export"); `kind` goes before it in log lines ("stage ").
    Raises the first failing unit's exception (an `ArtifactError` for a full disk) after recording
    it in `place`."""
    place.clear_failure()
    missing = [u for u in units if not _done(place, u)]
    done = len(units) - len(missing)
    what = f"{kind}{name:13s}"
    log.info("%s running %d of %d unit(s) (%d already done) -> %s", what, len(missing), len(units), done, place.path)
    if missing:
        with tqdm(total=len(missing), desc=name, unit="unit", disable=len(missing) < 2) as bar:
            if client is None:
                _in_process(place, missing, name, what, bar)
            else:
                _on_cluster(place, missing, client, name, what, resources, bar)
    records = [place.shard_record(u.index) for u in units]
    assert all(r is not None for r in records), "every unit writes its record before returning"
    return records  # type: ignore[return-value]


def _done(place: UnitRecords, unit: Unit) -> bool:
    """The unit's record exists, its files match their checksums, and it is a record of this very
    unit: the same label, i.e. the same images ("shard 3 (images 96-127)"); a record left by a cut
    into other pieces (another `dataset.index_slice`, say) is redone, not trusted."""
    return place.shard_is_valid(unit.index) and (place.shard_record(unit.index) or {}).get("label") == unit.label


def _in_process(place: UnitRecords, units: list[Unit], name: str, what: str, bar: tqdm) -> None:
    for unit in units:
        try:
            record = _disk_full_named(lambda unit=unit: _run_and_record(place, unit), name, place, unit)
        except Exception as e:
            place.record_failure(unit.label, e)
            raise
        _finished(what, unit, record, bar)


def _on_cluster(
    place: UnitRecords,
    units: list[Unit],
    client: Client,
    name: str,
    what: str,
    resources: dict[str, int] | None,
    bar: tqdm,
) -> None:
    attempt = uuid.uuid4().hex[:8]  # fresh keys: a retry must not get an earlier attempt's (erred) result
    futures = {
        client.submit(
            run_unit,
            place,
            u,
            logging.getLogger("labelgen").getEffectiveLevel(),
            key=f"{name}-{u.index}-{attempt}",
            pure=False,
            resources=resources,
        ): u
        for u in units
    }
    try:
        for future in as_completed(futures):
            unit = futures[future]
            try:  # .result() re-raises the task's exception with its traceback
                record = _disk_full_named(future.result, name, place, unit)
            except Exception as e:
                place.record_failure(unit.label, e)
                raise
            _finished(what, unit, record, bar)
    finally:
        client.cancel(list(futures))  # after a failure, stop the rest rather than let it write on


def _finished(what: str, unit: Unit, record: dict[str, Any], bar: tqdm) -> None:
    log.info("%s %s done in %.1fs", what, unit.label, record["seconds"])
    bar.update()


def _disk_full_named(call: Any, name: str, place: UnitRecords, unit: Unit) -> dict[str, Any]:
    """`call()`, with a full disk turned into one line that says what to do."""
    try:
        return call()
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise ArtifactError(
            f"disk full while {name} wrote {unit.label} under {place.path} ({e}); free space and "
            "rerun the same command: finished units and stages are kept"
        ) from e


def run_unit(place: UnitRecords, unit: Unit, log_level: int = logging.INFO) -> dict[str, Any]:
    """Executed on a worker: set the process up for a unit, then `_run_and_record`."""
    prepare_worker_process(log_level)
    return _run_and_record(place, unit)


def _run_and_record(place: UnitRecords, unit: Unit) -> dict[str, Any]:
    """Do the unit's work, then record its completion with checksums; returns the record."""
    started = time.perf_counter()
    files, info = unit.fn(*unit.args)
    info = {"label": unit.label, "seconds": round(time.perf_counter() - started, 3), **info}
    compute = compute_record(unit.args[0] if unit.args else None)
    if compute:
        info["compute"] = compute
    place.write_shard_record(unit.index, files, info)
    return place.shard_record(unit.index)  # type: ignore[return-value]


def compute_record(params: Any) -> dict[str, str] | None:
    """Where a model unit ran and at what precision `precision = "auto"` resolved to there, so one
    cache key never silently names results of two precisions; None for a unit without a model."""
    precision = getattr(params, "precision", None)
    if precision is None:
        return None
    from labelgen.devices import pick_device
    from labelgen.models.precision import resolve_precision

    device = pick_device(getattr(params, "device", "auto"))
    return {"device": device.type, "precision": resolve_precision(device, precision)}
