"""A real Label Studio server for tests, in its own virtual environment (its Django dependencies
clash with labelgen's), on 127.0.0.1 with a free port, SQLite in a tmp folder, offline.

Where the server comes from: `LABEL_STUDIO_BIN` (a `label-studio` executable), else a virtual
environment in the user's cache (`$XDG_CACHE_HOME/labelgen-tests/label-studio-<version>`, default
`~/.cache`), built on first use with `pip install label-studio==<version>` (a few minutes; `.ci/run`
builds it before the tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

VERSION = "1.23.2"
START_TIMEOUT_S = 600  # its first start migrates a fresh SQLite database: minutes on a loaded 2-core machine


def venv_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "labelgen-tests" / f"label-studio-{VERSION}"


def label_studio_bin() -> Path:
    """The `label-studio` executable: LABEL_STUDIO_BIN, else the cached venv (built if missing)."""
    given = os.environ.get("LABEL_STUDIO_BIN")
    if given:
        return Path(given)
    venv = venv_dir()
    exe = venv / "bin" / "label-studio"
    if not exe.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, stdout=sys.stderr)
        pip = [str(venv / "bin" / "pip"), "install", "-q", f"label-studio=={VERSION}"]
        subprocess.run(pip, check=True, stdout=sys.stderr)  # stdout stays the path .ci/run reads
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    token: str
    user: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """Stop the server's process group (it was started in a session of its own), by its pid."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


def start_server(data_dir: Path) -> Server:
    exe = label_studio_bin()
    port, token, user = free_port(), "labelgen-test-token-0123456789", "reviewer@example.org"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LATEST_VERSION_CHECK": "false",  # offline: it would ask PyPI for its latest version
        "COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "DJANGO_DB": "sqlite",
    }
    env.pop("PYTHONPATH", None)  # its own environment, not labelgen's
    log = data_dir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(exe),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--username",
                user,
                "--password",
                "labelgen-test-pw",
                "--user-token",
                token,
                "--enable-legacy-api-token",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data_dir,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", token, user, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"label-studio exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            r = requests.get(f"{server.url}/api/projects", headers={"Authorization": f"Token {token}"}, timeout=5)
            if r.status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(2)
    server.stop()
    raise RuntimeError(f"label-studio did not answer within {START_TIMEOUT_S} s: {log.read_text()[-3000:]}")
