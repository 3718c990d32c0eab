"""Helpers of the metrics tests: real Prometheus and Pushgateway processes on loopback, polling,
and reading the exposition format and docs/metrics.md. Fixtures wrapping them are in conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-system-deps.sh"
METRICS_DOC = REPO / "docs" / "metrics.md"
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy (returned); exceptions count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a server still starting refuses connections
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last_error})" if last_error else ""))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


_install_attempted: dict[str, bool] = {}


def ensure_binary(name: str) -> str | None:
    """Path of `name`, running scripts/install-system-deps.sh once if it is missing."""
    if shutil.which(name) is None and not _install_attempted.get("done"):
        _install_attempted["done"] = True
        subprocess.run([str(INSTALL_SCRIPT)], check=False, timeout=600)
    return shutil.which(name)


# ----------------------------------------------------------------------------------------------
# Real servers.

def _dies_with_us(args: list[str]) -> list[str]:
    """`args` run so that the server gets SIGTERM if the test process dies without its teardown."""
    setpriv = shutil.which("setpriv")  # util-linux; a fork hook would be unsafe with threads
    return [setpriv, "--pdeathsig", "TERM", *args] if setpriv else args


class ServerProcess:
    """A server binary on a free loopback port, ready once `ready_path` answers 200."""

    def __init__(self, args: list[str], port: int, ready_path: str, startup_timeout: float = 30):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = tempfile.mkdtemp(prefix="metrics-test-")
        self._log = open(os.path.join(self.workdir, "server.log"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(_dies_with_us(args), stdout=self._log,
                                        stderr=subprocess.STDOUT, cwd=self.workdir)
        try:
            wait_until(lambda: self._ready(ready_path), startup_timeout, f"{args[0]} to be ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self, path: str) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"exited with {self.process.returncode}: {self.log_tail()}")
        return http_get(self.url + path, timeout=1)[0] == 200

    def log_tail(self) -> str:
        return Path(self.workdir, "server.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Pushgateway(ServerProcess):
    def __init__(self, binary: str):
        port = free_port()
        super().__init__([binary, f"--web.listen-address=127.0.0.1:{port}"], port, "/-/ready")

    def groups(self) -> list[dict]:
        """The /api/v1/metrics groups: each has "labels" and one entry per metric family."""
        return json.loads(http_get(self.url + "/api/v1/metrics")[1])["data"]

    def group(self, **labels: str) -> dict | None:
        return next((g for g in self.groups()
                     if all(g["labels"].get(k, "") == v for k, v in labels.items())), None)

    def exposition(self) -> dict[str, list]:
        """What Prometheus would scrape from the gateway, parsed: {sample name: [samples]}."""
        return samples_by_name(http_get(self.url + "/metrics")[1])


class Prometheus(ServerProcess):
    def __init__(self, binary: str, targets: list[str], scrape_interval: str = "1s"):
        port = free_port()
        storage = tempfile.mkdtemp(prefix="prometheus-data-")
        self._storage = storage
        config = Path(storage, "prometheus.yml")
        config.write_text(json.dumps({  # JSON is YAML; no emitter needed
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [{"job_name": "dreambooth", "honor_labels": True,
                                "static_configs": [{"targets": targets}]}],
        }))
        super().__init__([binary, f"--config.file={config}", f"--storage.tsdb.path={storage}/data",
                          f"--web.listen-address=127.0.0.1:{port}"], port, "/-/ready")

    def query(self, expr: str) -> dict:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = json.loads(http_get(url)[1])
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self._storage, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Reading what the job exposes and documents.

def samples_by_name(text: str) -> dict[str, list]:
    """{sample name: [Sample]} of an exposition, through prometheus-client's own parser."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def family_types(text: str) -> dict[str, str]:
    """{name as written in docs (counters with _total): type} of every family in an exposition."""
    return {family.name + ("_total" if family.type == "counter" else ""): family.type
            for family in text_string_to_metric_families(text)}


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    matching = [s.value for s in samples.get(name, [])
                if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, f"{name}{labels}: {len(matching)} samples"
    return matching[0]


_DOC_ROW = re.compile(r"^\|\s*`(dreambooth_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|([^|]+)\|$")


def documented_metrics() -> dict[str, dict[str, Any]]:
    """docs/metrics.md's table: {name: {"type", "labels" (beyond the id labels), "help"}}."""
    rows = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = _DOC_ROW.match(line.strip())
        if match:
            name, kind, labels, text = match.groups()
            assert name not in rows, f"{name} documented twice"
            rows[name] = {"type": kind, "labels": set(re.findall(r"`(\w+)`", labels)),
                          "help": text.strip()}
    return rows
