"""Start a real `labelgen` process and SIGKILL it (driver, scheduler and workers at once) mid-work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import TINY_RECIPE


def labelgen_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "labelgen.cli", *args]


def run_cmd(target: str, run_dir: Path, *overrides: str) -> list[str]:
    return labelgen_cmd(
        "run",
        target,
        "--dataset",
        "demo",
        "--recipe",
        str(TINY_RECIPE),
        "--run-dir",
        str(run_dir),
        "--workers",
        "1",
        *[f"--set={o}" for o in overrides],
    )


def kill_when(cmd: list[str], evidence: Path, pattern: str, timeout: float = 180) -> None:
    """Run `cmd`; as soon as a file matching `pattern` under `evidence` exists, SIGKILL its process group."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not list(evidence.glob(pattern)):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {pattern} appeared: {proc.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, f"no {pattern} after {timeout}s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
