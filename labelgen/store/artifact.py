"""Artifact folders: content-addressed keys, atomic completion records, shard records, locks.

An artifact lives in `<run>/<stage>/<key>/`. It is complete only when `_SUCCESS.json` exists; that
file is written last, atomically (temp file, fsync, rename). Sharded artifacts keep one record per
shard in `_shards/<index>.json`; a shard without its record is rewritten whole. Records carry a
checksum of the files they vouch for, so a shard damaged after completion is found and redone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Self

from labelgen.data.fingerprint import file_digest
from labelgen.errors import ArtifactError, LockHeldError

SCHEMA_VERSION = 1
SUCCESS = "_SUCCESS.json"
SHARDS = "_shards"
PLAN_FILE = "_plan.json"  # how many units the stage was cut into, written before they run
FAILED = "_FAILED.json"  # the unit that failed last and its error line; removed when the stage reruns


def stage_key(stage: str, version: int, params: dict[str, Any], input_keys: dict[str, str]) -> str:
    """Short hash of a stage's identity: name, code version, significant params, upstream keys."""
    payload = {
        "stage": stage,
        "version": version,
        "schema": SCHEMA_VERSION,
        "params": params,
        "inputs": input_keys,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def standard_json(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None: Python writes them as bare `NaN`,
    which JSON does not have (JavaScript's JSON.parse, jq --strict and most other readers refuse the
    file); null is what a score that cannot be computed (a class absent from GT and prediction) is."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: standard_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [standard_json(v) for v in data]
    return data


def write_atomic(path: Path, write: Callable[[IO], None], mode: str = "w") -> None:
    """Write `path` through `write(file)` (temp file, fsync, rename) so that readers see the old file
    or the whole new one, never a torn one; a write that fails (a full disk, data that cannot be
    written) leaves the old file as it was and no temp file. `mode`: "w" (text) or "wb"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """`data` as JSON (NaN/inf as null), written atomically (`write_atomic`)."""
    write_atomic(
        path, lambda f: json.dump(standard_json(data), f, indent=1, sort_keys=True, default=str, allow_nan=False)
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tree_digest(paths: list[Path], root: Path) -> dict[str, str]:
    """Checksums of files, keyed by their path relative to `root`."""
    return {str(p.relative_to(root)): file_digest(p) for p in sorted(paths)}


def environment_record() -> dict[str, Any]:
    """Package versions and host, recorded in every completion record."""
    versions = {}
    for pkg in ("labelgen", "torch", "timm", "dask", "distributed", "zarr", "numpy", "pydensecrf2"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"packages": versions, "host": socket.gethostname(), "python": platform.python_version()}


class UnitRecords:
    """A folder that units of work write into, with one completion record per unit (checksums of
    the files it vouches for), the last failure, and a lock: what `labelgen.pipeline.executor` needs
    to resume, refuse a second writer and report. Subclasses say where each lives: `Artifact` (a
    stage's output folder) and `labelgen.store.workfolder.WorkFolder` (an export or index folder)."""

    @property
    def path(self) -> Path:
        """The folder the units write into; records name files relative to it."""
        raise NotImplementedError

    @property
    def records_dir(self) -> Path:
        raise NotImplementedError

    @property
    def failure_path(self) -> Path:
        raise NotImplementedError

    @property
    def lock_path(self) -> Path:
        raise NotImplementedError

    def describe(self) -> str:
        """What a message calls it, e.g. "train_cam artifact <path>"."""
        raise NotImplementedError

    def lock_advice(self) -> str:
        """What to do when another process holds its lock."""
        raise NotImplementedError

    def shard_record_path(self, index: int) -> Path:
        return self.records_dir / f"{index:06d}.json"

    def shard_record(self, index: int) -> dict[str, Any] | None:
        path = self.shard_record_path(index)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a torn record counts as missing; the shard is redone

    def shard_is_valid(self, index: int) -> bool:
        """A shard counts as done when its record exists and its files still match their checksums."""
        record = self.shard_record(index)
        if record is None:
            return False
        for rel, digest in record.get("files", {}).items():
            file = self.path / rel
            if not file.is_file() or file_digest(file) != digest:
                return False
        return True

    def write_shard_record(self, index: int, files: list[Path], info: dict[str, Any]) -> None:
        record = {"shard": index, "files": tree_digest(files, self.path), **info}
        write_json_atomic(self.shard_record_path(index), record)

    def record_failure(self, unit: str, error: BaseException) -> None:
        """Note that `unit` failed with `error` (its first line), for `labelgen status`."""
        line = (str(error).strip().splitlines() or [""])[0]
        record = {"unit": unit, "error": f"{type(error).__name__}: {line}", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with contextlib.suppress(OSError):  # a full disk (say) must not hide the error being reported
            write_json_atomic(self.failure_path, record)

    def failure(self) -> dict[str, Any] | None:
        """The last failure record, or None."""
        try:
            return json.loads(self.failure_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def clear_failure(self) -> None:
        self.failure_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Artifact(UnitRecords):
    """One stage output folder. Pure path logic plus the completion protocol."""

    run_dir: Path
    stage: str
    key: str

    @property
    def path(self) -> Path:
        return self.run_dir / self.stage / self.key

    @property
    def records_dir(self) -> Path:
        return self.path / SHARDS

    @property
    def failure_path(self) -> Path:
        return self.path / FAILED

    @property
    def lock_path(self) -> Path:
        return self.path.parent / f".{self.key}.lock"

    def describe(self) -> str:
        return f"{self.stage} artifact {self.path}"

    def lock_advice(self) -> str:
        return "wait for that run to finish (or stop it) before starting another on the same run folder"

    @property
    def success_path(self) -> Path:
        return self.path / SUCCESS

    def is_complete(self) -> bool:
        return self.success_path.is_file()

    def success(self) -> dict[str, Any]:
        try:
            return json.loads(self.success_path.read_text())
        except FileNotFoundError as e:
            raise ArtifactError(
                f"{self.stage} artifact {self.path} is not complete (no {SUCCESS}); "
                f"run `labelgen run {self.stage}` first"
            ) from e

    def missing_outputs(self) -> list[tuple[str, Path]]:
        """(output name, path) of each file a finished artifact's `_SUCCESS.json` lists among its
        declared outputs that is no longer there (empty for an unfinished artifact, or one finished
        before outputs were listed)."""
        if not self.is_complete():
            return []
        listed = self.success().get("outputs", {})
        return [(name, self.path / f) for name, files in listed.items() for f in files if not (self.path / f).exists()]

    def damage(self) -> str | None:
        """One line saying which listed output of a finished artifact is gone and how to redo it, or None."""
        gone = self.missing_outputs()
        if not gone:
            return None
        name, path = gone[0]
        return missing_output(self, name, path)

    def write_success(self, params: dict[str, Any], inputs: dict[str, str], info: dict[str, Any]) -> None:
        record = {
            "stage": self.stage,
            "key": self.key,
            "params": params,
            "inputs": inputs,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **environment_record(),
            **info,
        }
        write_json_atomic(self.success_path, record)


class ArtifactLock:
    """An exclusive lock on one artifact (or other `UnitRecords` folder), held by the process that
    writes it.

    `flock` is released by the kernel when the holder dies, so a SIGKILLed run never leaves a
    stale lock behind; a live holder makes the second writer fail at once with its pid and host.
    """

    def __init__(self, artifact: UnitRecords):
        self.artifact = artifact
        self.path = artifact.lock_path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(fd)
            os.close(fd)
            raise LockHeldError(
                f"{self.artifact.describe()} is being written by {holder}; {self.artifact.lock_advice()}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd

    def holder(self) -> str | None:
        """Who holds the lock now ("pid N on host"), or None; takes nothing (a shared lock tried and
        let go at once)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_of(fd)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder_of(fd: int) -> str:
    """What the holder of a lock file wrote in it ("pid N on host")."""
    return os.read(fd, 256).decode(errors="replace").strip() or "unknown process"


def missing_output(art: Artifact, name: str, path: Path | str) -> str:
    """The one line for a declared output `name` of `art` that is not at `path`, with the fix."""
    return (
        f"{art.stage} output {name!r} of run {art.run_dir} is missing: no {path}; rerun the command that made "
        f"this run with `--force {art.stage}` added"
    )
