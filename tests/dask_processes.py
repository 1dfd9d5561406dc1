"""A dask cluster labelgen did not start: a `dask scheduler` and `dask worker` processes on 127.0.0.1
(free ports), each stopped by its pid when the block ends, also when it fails."""

from __future__ import annotations

import contextlib
import datetime
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DASK = str(Path(sys.executable).with_name("dask"))
START_SECONDS = 90  # a scheduler and its workers up, on a loaded 2-core machine


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one self-signed certificate that is its own CA (as `Security.temporary()` makes
    in memory): every role of the test cluster, the client included, presents it."""

    ca: Path
    cert: Path
    key: Path

    def cli_args(self) -> list[str]:
        return ["--tls-ca-file", str(self.ca), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]

    def env(self) -> dict[str, str]:
        """dask's TLS settings of a client, as environment variables."""
        return {
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(self.ca),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(self.cert),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(self.key),
        }


def make_tls_files(folder: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labelgen-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.ca.write_bytes(files.cert.read_bytes())
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(folder.glob("*.log")))


@contextlib.contextmanager
def dask_processes(folder: Path, workers: list[list[str]], tls: TlsFiles | None = None) -> Iterator[str]:
    """Start a scheduler and one worker per entry of `workers` (its extra `dask worker` arguments,
    e.g. ["--resources", "GPU=1"]), named w0, w1, ...; yield the scheduler's address once every
    worker has joined. Logs go to `folder`/*.log."""
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    secure = [*tls.cli_args(), "--protocol", "tls"] if tls else []
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> None:
        with (folder / log).open("w") as f:
            procs.append(subprocess.Popen([DASK, *args], stdout=f, stderr=subprocess.STDOUT))

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
               str(scheduler_file), *secure], "scheduler.log")  # fmt: skip
        deadline = time.time() + START_SECONDS
        while not scheduler_file.is_file():
            assert time.time() < deadline and procs[0].poll() is None, f"no dask scheduler:\n{_logs(folder)}"
            time.sleep(0.1)
        for i, extra in enumerate(workers):
            start(["worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-dashboard",
                   "--name", f"w{i}", *secure, *extra], f"worker{i}.log")  # fmt: skip
        address = json.loads(scheduler_file.read_text())["address"]
        _wait_for_workers(address, len(workers), tls, deadline, folder)
        yield address
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait_for_workers(address: str, n: int, tls: TlsFiles | None, deadline: float, folder: Path) -> None:
    from distributed import Client
    from distributed.security import Security

    security = None
    if tls:
        security = Security(tls_ca_file=str(tls.ca), tls_client_cert=str(tls.cert), tls_client_key=str(tls.key))
    with Client(address, security=security, timeout=max(1, deadline - time.time())) as c:
        try:
            c.wait_for_workers(n, timeout=max(1, deadline - time.time()))
        except TimeoutError as e:
            raise AssertionError(f"{n} dask workers did not join:\n{_logs(folder)}") from e
