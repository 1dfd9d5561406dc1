import multiprocessing
import os
import signal
import time

import pytest

from labelgen.errors import LockHeldError
from labelgen.store.artifact import Artifact, ArtifactLock, stage_key, write_json_atomic


def test_key_depends_on_params_inputs_and_version():
    base = stage_key("s", 1, {"a": 1}, {"up": "x"})
    assert base == stage_key("s", 1, {"a": 1}, {"up": "x"})
    assert base != stage_key("s", 1, {"a": 2}, {"up": "x"})
    assert base != stage_key("s", 1, {"a": 1}, {"up": "y"})
    assert base != stage_key("s", 2, {"a": 1}, {"up": "x"})


def test_shard_record_detects_damage(tmp_path):
    art = Artifact(tmp_path, "stage", "k")
    art.path.mkdir(parents=True)
    data = art.path / "part.bin"
    data.write_bytes(b"abc")
    art.write_shard_record(0, [data], {"n": 1})
    assert art.shard_is_valid(0)
    data.write_bytes(b"abd")  # damaged after completion
    assert not art.shard_is_valid(0)
    art.shard_record_path(1).write_text("{torn")
    assert not art.shard_is_valid(1)


def test_success_written_atomically(tmp_path):
    art = Artifact(tmp_path, "stage", "k")
    assert not art.is_complete()
    art.path.mkdir(parents=True)
    art.write_success({"p": 1}, {}, {"n": 2})
    assert art.is_complete() and art.success()["n"] == 2
    assert not list(art.path.glob(".*.tmp"))


def test_a_write_that_dies_midway_leaves_the_old_file_whole(tmp_path, monkeypatch):
    import json

    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})

    def dump_half(data, f, **kw):
        f.write('{"a": ')  # the process dies here, half-way through the new content
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", dump_half)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(target, {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}  # readers see the old file, never a torn one


def _hold(path, ready):
    lock = ArtifactLock(Artifact(path, "stage", "k"))
    lock.acquire()
    ready.set()
    time.sleep(60)


def test_lock_fails_clearly_while_held_and_frees_when_holder_is_killed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, ready))
    holder.start()
    assert ready.wait(10)
    with pytest.raises(LockHeldError, match=f"pid {holder.pid}"):
        ArtifactLock(Artifact(tmp_path, "stage", "k")).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    with ArtifactLock(Artifact(tmp_path, "stage", "k")):
        pass  # a SIGKILLed holder leaves no stale lock
