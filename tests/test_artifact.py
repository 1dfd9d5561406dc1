import multiprocessing
import os
import signal
import time

import pytest

from labelgen.errors import LockHeldError
from labelgen.store.artifact import Artifact, ArtifactLock, stage_key


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


def _fail_mid_dump(monkeypatch):
    import json

    def dump_half(data, f, **kw):
        f.write('{"stage": ')  # the write dies here, half-way through the new content
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", dump_half)


def _fail_at_rename(monkeypatch):
    def no_replace(src, dst):
        raise OSError(28, "No space left on device")  # the new file is whole, but never put in place

    monkeypatch.setattr(os, "replace", no_replace)


@pytest.mark.parametrize("fail", [_fail_mid_dump, _fail_at_rename], ids=["mid_dump", "at_rename"])
def test_success_written_atomically(tmp_path, monkeypatch, fail):
    """A `_SUCCESS.json` rewrite that fails part-way (a full disk while dumping, or at the rename)
    leaves the old record whole, readable and in place, and no temp file behind."""
    art = Artifact(tmp_path, "stage", "k")
    art.path.mkdir(parents=True)
    art.write_success({"p": 1}, {}, {"n": 1})
    old = art.success_path.read_bytes()
    fail(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        art.write_success({"p": 2}, {}, {"n": 2})
    monkeypatch.undo()
    assert art.success_path.read_bytes() == old and art.success()["n"] == 1
    assert sorted(p.name for p in art.path.iterdir()) == ["_SUCCESS.json"]  # no .tmp left behind


def test_a_checkpoint_save_that_fails_leaves_the_old_one_and_no_temp_file(tmp_path, monkeypatch):
    import torch

    from labelgen.store.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "epoch": 1})

    def save_half(state, f):
        f.write(b"PK")  # torch.save dies part-way
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"model": {}, "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


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
