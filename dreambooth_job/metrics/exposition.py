"""Exposition of the job's registry: `/metrics` and `/healthz` served while the job runs, pushes to a
Pushgateway so that the outcome outlives the pod, and the batch tooling that finds and deletes the
pushed groups.

Pushgateway groups: every push replaces the group ``job="dreambooth-job", batch_id=<batch id or
empty>, subject_id=<subject id>``, so a retried pod overwrites its predecessor and a batch's groups
can be found and deleted together. Groups live until deleted: once a batch's report is written, call
``delete_batch_groups(url, batch_id, subject_ids)``. With DREAMBOOTH_PUSHGATEWAY_USERNAME/PASSWORD
set, every request to the gateway carries them as basic auth.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

import prometheus_client
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import basic_auth_handler, default_handler

from dreambooth_job.redaction import redact

log = logging.getLogger(__name__)

PUSH_JOB = "dreambooth-job"
"""The Pushgateway's `job` grouping label of every pushed group."""
DEFAULT_PUSH_TIMEOUT = 5.0
PUSH_USERNAME_ENV, PUSH_PASSWORD_ENV = "DREAMBOOTH_PUSHGATEWAY_USERNAME", "DREAMBOOTH_PUSHGATEWAY_PASSWORD"
"""Basic-auth credentials of the Pushgateway, from a Secret through the environment: a URL with
`user:password@` is refused (it would travel in Job args and result.json)."""

PushHandler = Callable[[str, str, float | None, list[tuple[str, str]], bytes], Callable[[], None]]
"""prometheus_client's handler signature: (url, method, timeout, headers, data) -> the request."""


def push_handler(env: Mapping[str, str] | None = None) -> PushHandler:
    """prometheus_client's push handler: basic auth when the environment holds credentials."""
    env = os.environ if env is None else env
    username, password = env.get(PUSH_USERNAME_ENV), env.get(PUSH_PASSWORD_ENV)
    if not username and not password:
        return default_handler

    def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                data: bytes) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return handler


def grouping_key(batch_id: str | None, subject_id: str) -> dict[str, str]:
    """The Pushgateway grouping key (besides job="dreambooth-job") of one subject's job; redacted
    like every label (labels are written to every scrape and push)."""
    return {"batch_id": redact(batch_id or ""), "subject_id": redact(subject_id)}


# ----------------------------------------------------------------------------------------------
# Serving and pushing.

class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape must never hold the job's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per scrape would drown the job's log


class MetricsServer:
    """`/metrics` (Prometheus text format) and `/healthz` of a registry, in a daemon thread.

    /healthz answers 200 as long as the process can serve requests; it does not judge training.
    """

    def __init__(self, registry: CollectorRegistry, host: str = "0.0.0.0", port: int = 9090):
        self._metrics_app = prometheus_client.make_wsgi_app(registry)
        self._server = make_server(host, port, self._app, _ThreadingWSGIServer,
                                   handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="metrics-server")
        self._thread.start()

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        text = [("Content-Type", "text/plain; charset=utf-8")]
        if path == "/healthz":
            start_response("200 OK", text)
            return [b"ok\n"]
        start_response("404 Not Found", text)
        return [b"not found: try /metrics or /healthz\n"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Pusher:
    """Pushes a registry to one Pushgateway group: in the background on request, synchronously at
    the end. Pushes are serialized, so the final push is the last one the gateway sees."""

    def __init__(self, url: str, group: Mapping[str, str], registry: CollectorRegistry,
                 failures: Counter, timeout: float = DEFAULT_PUSH_TIMEOUT):
        self.url, self.group, self.registry = url, dict(group), registry
        self.failures, self.timeout = failures, timeout
        self.handler = push_handler()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._final = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="metrics-pusher")
        self._thread.start()

    def request(self) -> None:
        """Push soon, off the caller's thread; requests arriving during a push coalesce."""
        self._wake.set()

    def push_final(self) -> bool:
        """Stop background pushes and push the registry now; True when it arrived."""
        self._final = True
        self._wake.set()
        return self._push(final=True)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._final:
                return
            self._push()

    def _push(self, final: bool = False) -> bool:
        with self._lock:
            if self._final and not final:
                return False
            try:
                prometheus_client.push_to_gateway(self.url, PUSH_JOB, self.registry,
                                                  grouping_key=self.group, timeout=self.timeout,
                                                  handler=self.handler)
                return True
            except Exception as exc:  # noqa: BLE001 - a push never fails the job
                self.failures.inc()
                log.warning("push to Pushgateway %s failed: %s", self.url, exc)
                return False


# ----------------------------------------------------------------------------------------------
# Batch tooling: the Pushgateway groups outlive the jobs until someone deletes them.

def pushed_groups(url: str, batch_id: str | None = None, *,
                  timeout: float = 10.0) -> list[dict[str, str]]:
    """Grouping labels of the job groups on the Pushgateway, optionally of one batch only."""
    base = url if url.startswith(("http://", "https://")) else f"http://{url}"
    request = urllib.request.Request(base.rstrip("/") + "/api/v1/metrics")
    username, password = os.environ.get(PUSH_USERNAME_ENV), os.environ.get(PUSH_PASSWORD_ENV)
    if username or password:
        token = base64.b64encode(f"{username or ''}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        groups = [g["labels"] for g in json.load(response)["data"]]
    return [g for g in groups if g.get("job") == PUSH_JOB
            and (batch_id is None or g.get("batch_id", "") == batch_id)]


def delete_batch_groups(url: str, batch_id: str, subject_ids: Iterable[str] | None = None, *,
                        timeout: float = 10.0) -> list[str]:
    """Delete the Pushgateway groups of a batch's jobs, e.g. once the batch report is written.

    Without `subject_ids`, deletes every group of the batch found on the gateway. Deleting a group
    that does not exist succeeds. Returns the subject ids whose deletion failed (each is logged).
    """
    if subject_ids is None:
        subject_ids = [g["subject_id"] for g in pushed_groups(url, batch_id, timeout=timeout)]
    subject_ids = list(subject_ids)
    failed = []
    for subject_id in subject_ids:
        try:
            prometheus_client.delete_from_gateway(url, PUSH_JOB, grouping_key(batch_id, subject_id),
                                                  timeout=timeout, handler=push_handler())
        except Exception as exc:  # noqa: BLE001 - try every group, report the failed ones
            log.warning("deleting Pushgateway group of %s/%s failed: %s", batch_id, subject_id, exc)
            failed.append(subject_id)
    deleted = set(subject_ids) - set(failed)
    return failed + (_wait_until_unlisted(url, batch_id, deleted, timeout) if deleted else [])


def _wait_until_unlisted(url: str, batch_id: str, subject_ids: set[str],
                         timeout: float) -> list[str]:
    """The gateway answers a DELETE with 202 and applies it from its write queue later: wait until
    the groups are no longer listed, so that whoever lists right after sees them gone. Returns
    the subject ids still listed when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            listed = {g.get("subject_id") for g in pushed_groups(url, batch_id, timeout=timeout)}
        except OSError as exc:
            log.warning("listing Pushgateway groups of batch %s failed: %s", batch_id, exc)
            listed = set(subject_ids)
        remaining = sorted(subject_ids & listed)
        if not remaining or time.monotonic() >= deadline:
            for subject_id in remaining:
                log.warning("Pushgateway group of %s/%s still listed after %ss", batch_id,
                            subject_id, timeout)
            return remaining
        time.sleep(0.05)
