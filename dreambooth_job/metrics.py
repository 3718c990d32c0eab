"""Prometheus metrics of one job: scraped from `/metrics` while it runs, pushed to a Pushgateway so
that its outcome outlives the pod. Every metric is listed, one line each, in docs/metrics.md.

How the job uses it (the whole contract)::

    config = resolve_ids(config)               # job_id and subject_id first
    metrics = PrometheusObserver(config)       # those ids label every metric and the push group
    with metrics:                              # start() before the download, close() at the end
        return run_context(RunContext.create(config, fingerprint, ObserverGroup(metrics, observer)))
                                               # events, ending with finished(exit_code=...)

- `start()` serves /metrics and /healthz on `config.metrics_port` (0: no server) on 0.0.0.0, and
  with `config.pushgateway` pushes once now and again at every `phase_started`, in the background.
- `finished(exit_code=...)` must be called once on every outcome (success, failure, SIGTERM): it
  sets the exit code, the failed gauge, the success timestamp and the done/failed phase, then pushes
  synchronously (at most `push_timeout`, 5 s, or twice that behind an in-flight push).
- `close()` stops the server after a final push if `finished` never came; idempotent, and also
  run at interpreter exit.

`PrometheusObserver(config, job_id=..., subject_id=...)` takes the ids explicitly too; without
them or the config's, the subject id is `config.resolved_subject_id` and the job id the subject
id. No method raises: metrics must never fail the job.

Pushgateway groups: every push replaces the group ``job="dreambooth-job", batch_id=<batch id or
empty>, subject_id=<subject id>``, so a retried pod overwrites its predecessor and a batch's groups
can be found and deleted together. Groups live until deleted: once a batch's report is written, call
``delete_batch_groups(url, batch_id, subject_ids)``.

    >>> from dreambooth_job.config import TrainConfig
    >>> obs = PrometheusObserver(TrainConfig(metrics_port=0, job_id="j1", subject_id="dog"))
    >>> obs.phase_started("train")
    >>> b'dreambooth_phase{batch_id="",job_id="j1",phase="train",subject_id="dog"} 1.0' in obs.exposition()
    True
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import logging
import math
import os
import resource
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import ClassVar, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.registry import Collector

from dreambooth_job import __version__
from dreambooth_job.config import TrainConfig
from dreambooth_job.events import PHASES, JobObserver, TrainProgress
from dreambooth_job.redaction import redact

log = logging.getLogger(__name__)

# `_created` series would double every counter's series count for no dashboard use, and would be
# exposed as undocumented gauges in the text format. The switch is process-wide: the job owns its
# process.
prometheus_client.disable_created_metrics()

ID_LABELS = ("job_id", "subject_id", "batch_id")
"""Labels on every metric; constant for the life of a job, so label sets stay bounded."""
PUSH_JOB = "dreambooth-job"
"""The Pushgateway's `job` grouping label of every pushed group."""
LOSS_PARTS = ("total", "instance", "prior")
DIRECTIONS = ("download", "upload")
CLASS_IMAGE_SOURCES = ("generated", "reused")
DEFAULT_PUSH_TIMEOUT = 5.0
PUSH_USERNAME_ENV, PUSH_PASSWORD_ENV = "DREAMBOOTH_PUSHGATEWAY_USERNAME", "DREAMBOOTH_PUSHGATEWAY_PASSWORD"
"""Basic-auth credentials of the Pushgateway, from a Secret through the environment: a URL with
`user:password@` is refused (it would travel in Job args and result.json)."""
BASELINE_PREFIX = "base_"


def push_handler(env: Mapping[str, str] | None = None):
    """prometheus_client's push handler: basic auth when the environment holds credentials."""
    env = os.environ if env is None else env
    username, password = env.get(PUSH_USERNAME_ENV), env.get(PUSH_PASSWORD_ENV)
    if not username and not password:
        return default_handler

    def handler(url, method, timeout, headers, data):
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return handler


def grouping_key(batch_id: str | None, subject_id: str) -> dict[str, str]:
    """The Pushgateway grouping key (besides job="dreambooth-job") of one subject's job; redacted
    like every label (labels are written to every scrape and push)."""
    return {"batch_id": redact(batch_id or ""), "subject_id": redact(subject_id)}


class JobMetrics:
    """The metric objects of one job, in a registry of their own, bound to the job's ids."""

    def __init__(self, job_id: str, subject_id: str, batch_id: str | None = None):
        self.registry = CollectorRegistry()
        self.ids = {"job_id": redact(job_id), "subject_id": redact(subject_id),
                    "batch_id": redact(batch_id or "")}

        def gauge(name, doc, *labels):
            return Gauge(name, doc, [*ID_LABELS, *labels], registry=self.registry)

        def counter(name, doc, *labels):
            return Counter(name, doc, [*ID_LABELS, *labels], registry=self.registry)

        ids = self.ids
        gauge("dreambooth_job_info", "Always 1; its labels name the job and the package version.",
              "version").labels(**ids, version=__version__).set(1)
        self.start_time = gauge(
            "dreambooth_start_timestamp_seconds", "Unix time the job started.").labels(**ids)

        phase = gauge("dreambooth_phase", "1 for the phase the job is in, 0 for the others.", "phase")
        self.phase = {p: phase.labels(**ids, phase=p) for p in PHASES}
        self.phase_started = gauge(
            "dreambooth_phase_started_timestamp_seconds",
            "Unix time the current phase started.").labels(**ids)
        # Children appear as phases finish: a 0 for a phase not run would read as "took no time".
        self._phase_duration = gauge("dreambooth_phase_duration_seconds",
                                     "Wall-clock seconds each finished phase took.", "phase")

        self.train_step = gauge("dreambooth_train_step", "Optimizer steps done.").labels(**ids)
        self.train_target = gauge(
            "dreambooth_train_target_steps", "Optimizer steps the run trains for.").labels(**ids)
        loss = gauge("dreambooth_train_loss",
                     "Latest training loss: total, instance part and prior-preservation part.", "part")
        self.loss = {p: loss.labels(**ids, part=p) for p in LOSS_PARTS}
        self.learning_rate = gauge(
            "dreambooth_train_learning_rate", "Current learning rate.").labels(**ids)
        self.steps_per_second = gauge(
            "dreambooth_train_steps_per_second", "Recent optimizer steps per second.").labels(**ids)
        self.images_per_second = gauge(
            "dreambooth_train_images_per_second",
            "Recent training images (subject and class) per second.").labels(**ids)
        self.eta = gauge("dreambooth_train_eta_seconds",
                         "Estimated seconds until training ends.").labels(**ids)

        class_images = counter("dreambooth_class_images_total",
                               "Prior-preservation class images, generated or reused from the cache.",
                               "source")
        self.class_images = {s: class_images.labels(**ids, source=s) for s in CLASS_IMAGE_SOURCES}
        bytes_ = counter("dreambooth_storage_bytes_total",
                         "Bytes downloaded from or uploaded to the object store.", "direction")
        objects = counter("dreambooth_storage_objects_total",
                          "Objects downloaded from or uploaded to the object store.", "direction")
        self.storage_bytes = {d: bytes_.labels(**ids, direction=d) for d in DIRECTIONS}
        self.storage_objects = {d: objects.labels(**ids, direction=d) for d in DIRECTIONS}
        self.storage_retries = counter(
            "dreambooth_storage_retries_total", "Object-store requests retried.").labels(**ids)

        self.checkpoints = counter(
            "dreambooth_checkpoints_written_total", "Resumable checkpoints written.").labels(**ids)
        self.checkpoint_step = gauge(
            "dreambooth_checkpoint_last_step",
            "Step of the newest checkpoint (written or resumed from).").labels(**ids)
        self.checkpoint_time = gauge(
            "dreambooth_checkpoint_last_timestamp_seconds",
            "Unix time this process wrote its newest checkpoint; 0 before the first.").labels(**ids)
        self.checkpoint_age = gauge(
            "dreambooth_checkpoint_age_seconds",
            "Seconds since this process wrote a checkpoint; NaN before the first.").labels(**ids)
        self.last_checkpoint_at = 0.0
        self.checkpoint_age.set_function(
            lambda: time.time() - self.last_checkpoint_at if self.last_checkpoint_at else math.nan)
        self.resumes = counter(
            "dreambooth_resumes_total", "Times this process resumed from a checkpoint.").labels(**ids)
        self.resumed_from = gauge(
            "dreambooth_resumed_from_step", "Step resumed from; 0 for a fresh start.").labels(**ids)

        self._evaluation = gauge(
            "dreambooth_evaluation_score",
            "Final evaluation scores of the fine-tuned model and of the base model.", "score", "model")

        self.exit_code = gauge(
            "dreambooth_exit_code", "The job's exit code; -1 while it runs.").labels(**ids)
        self.exit_code.set(-1)
        self.failed = gauge(
            "dreambooth_failed", "1 once the job ended with a non-zero exit code, else 0.").labels(**ids)
        self.last_success = gauge(
            "dreambooth_last_success_timestamp_seconds",
            "Unix time the job succeeded; 0 until it does.").labels(**ids)
        self.push_failures = counter(
            "dreambooth_pushgateway_failures_total",
            "Pushes to the Pushgateway that failed (logged, never fatal).").labels(**ids)

        self.registry.register(MemoryCollector(self.ids))

    def evaluation_score(self, name: str, model: str = "tuned") -> Gauge:
        return self._evaluation.labels(**self.ids, score=name, model=model)

    def phase_duration(self, phase: str) -> Gauge:
        return self._phase_duration.labels(**self.ids, phase=phase)


class MemoryCollector(Collector):
    """Device memory read at scrape time.

    CUDA figures come from torch's caching allocator, read only when the job already imported torch
    and CUDA is available, so scraping never pulls torch in nor creates a CUDA context. Without
    CUDA, the single device "cpu" reports the process's resident memory as allocated and reserved.
    """

    FAMILIES: ClassVar[dict[str, str]] = {
        "dreambooth_device_memory_allocated_bytes": "Memory held by tensors now, per device.",
        "dreambooth_device_memory_reserved_bytes": "Memory reserved by the allocator now, per device.",
        "dreambooth_device_memory_peak_allocated_bytes": "Peak of the allocated memory, per device.",
        "dreambooth_device_memory_peak_reserved_bytes": "Peak of the reserved memory, per device.",
        "dreambooth_process_resident_memory_bytes": "Resident memory of the job's process.",
        "dreambooth_process_peak_resident_memory_bytes": "Peak resident memory of the job's process.",
    }

    def __init__(self, ids: Mapping[str, str]):
        self.ids = dict(ids)

    def describe(self):
        return [self._family(name, per_device=name.startswith("dreambooth_device"))
                for name in self.FAMILIES]

    def collect(self):
        families = {name: self._family(name, per_device=name.startswith("dreambooth_device"))
                    for name in self.FAMILIES}
        rss, peak_rss = process_memory()
        try:
            devices = cuda_memory()
        except Exception:  # a failing collector would blank the whole scrape
            log.debug("reading CUDA memory stats failed", exc_info=True)
            devices = {}
        if not devices:
            devices = {"cpu": (rss, rss, peak_rss, peak_rss)}
        ids = [self.ids[k] for k in ID_LABELS]
        for device, values in devices.items():
            for name, value in zip(list(self.FAMILIES)[:4], values):
                families[name].add_metric([*ids, device], value)
        families["dreambooth_process_resident_memory_bytes"].add_metric(ids, rss)
        families["dreambooth_process_peak_resident_memory_bytes"].add_metric(ids, peak_rss)
        return list(families.values())

    def _family(self, name: str, per_device: bool) -> GaugeMetricFamily:
        labels = [*ID_LABELS, "device"] if per_device else list(ID_LABELS)
        return GaugeMetricFamily(name, self.FAMILIES[name], labels=labels)


def cuda_memory() -> dict[str, tuple[int, int, int, int]]:
    """{"cuda:N": (allocated, reserved, peak allocated, peak reserved)}; empty without CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {}
    if not torch.cuda.is_initialized():
        # Nothing can be allocated before initialization; asking would create a context.
        return {f"cuda:{i}": (0, 0, 0, 0) for i in range(torch.cuda.device_count())}
    return {f"cuda:{i}": (torch.cuda.memory_allocated(i), torch.cuda.memory_reserved(i),
                          torch.cuda.max_memory_allocated(i), torch.cuda.max_memory_reserved(i))
            for i in range(torch.cuda.device_count())}


def process_memory() -> tuple[int, int]:
    """(resident bytes, peak resident bytes) of this process."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    try:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return peak, peak


# ----------------------------------------------------------------------------------------------
# Serving and pushing.

class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape must never hold the job's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one line per scrape would drown the job's log
        pass


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

    def _app(self, environ, start_response):
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


def _never_raises(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception:  # observers must not raise into the job
            log.warning("metrics: %s failed", method.__name__, exc_info=True)

    return wrapper


# ----------------------------------------------------------------------------------------------

class PrometheusObserver(JobObserver):
    """Turns the job's events into metrics, serves them and pushes them (see the module docs)."""

    def __init__(self, config: TrainConfig, *, job_id: str | None = None,
                 subject_id: str | None = None, host: str = "0.0.0.0",
                 push_timeout: float = DEFAULT_PUSH_TIMEOUT):
        subject_id = subject_id or config.resolved_subject_id
        job_id = job_id or config.job_id or subject_id
        self.metrics = JobMetrics(job_id, subject_id, config.batch_id)
        self.port, self.host, self.pushgateway = config.metrics_port, host, config.pushgateway
        self.group = grouping_key(config.batch_id, subject_id)
        self.push_timeout = push_timeout
        self.server: MetricsServer | None = None
        self.pusher: Pusher | None = None
        self._phase: str | None = None
        self._finished = self._closed = False

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def exposition(self) -> bytes:
        """What /metrics would answer now."""
        return generate_latest(self.registry)

    def start(self) -> None:
        """Serve /metrics and /healthz (unless --metrics-port is 0) and start pushing (with
        --pushgateway). A port already taken is logged and the job runs on without a server."""
        self.metrics.start_time.set(time.time())
        if self.port and self.server is None:
            try:
                self.server = MetricsServer(self.registry, self.host, self.port)
                log.info("serving metrics on http://%s:%d/metrics", self.host, self.server.port)
            except OSError as exc:
                log.warning("cannot serve metrics on %s:%d: %s", self.host, self.port, exc)
        if self.pushgateway and self.pusher is None:
            self.pusher = Pusher(self.pushgateway, self.group, self.registry,
                                 self.metrics.push_failures, self.push_timeout)
            self.pusher.request()
        atexit.register(self.close)

    def close(self) -> None:
        """Push the final state if `finished` did not, and stop serving. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self.pusher is not None and not self._finished:
            self.pusher.push_final()
        if self.server is not None:
            self.server.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- JobObserver ------------------------------------------------------------------------------
    @_never_raises
    def phase_started(self, phase: str) -> None:
        if phase not in PHASES:
            log.warning("metrics: ignoring unknown phase %r", phase)
            return
        for name, gauge in self.metrics.phase.items():
            gauge.set(1 if name == phase else 0)
        self.metrics.phase_started.set(time.time())
        self._phase = phase
        if self.pusher is not None:
            self.pusher.request()

    @_never_raises
    def phase_finished(self, phase: str, seconds: float) -> None:
        if phase in PHASES:
            self.metrics.phase_duration(phase).set(seconds)

    @_never_raises
    def train_progress(self, progress: TrainProgress) -> None:
        m = self.metrics
        m.train_step.set(progress.step)
        m.train_target.set(progress.max_steps)
        m.loss["total"].set(progress.loss)
        m.loss["instance"].set(progress.instance_loss)
        m.loss["prior"].set(progress.prior_loss)
        m.learning_rate.set(progress.learning_rate)
        m.steps_per_second.set(progress.steps_per_second)
        m.images_per_second.set(progress.images_per_second)
        m.eta.set(progress.eta_seconds)

    @_never_raises
    def class_images(self, *, generated: int, reused: int) -> None:
        self.metrics.class_images["generated"].inc(generated)
        self.metrics.class_images["reused"].inc(reused)

    @_never_raises
    def transfer(self, *, direction: str, num_bytes: int, objects: int) -> None:
        if direction not in DIRECTIONS:
            log.warning("metrics: ignoring transfer direction %r", direction)
            return
        self.metrics.storage_bytes[direction].inc(num_bytes)
        self.metrics.storage_objects[direction].inc(objects)

    @_never_raises
    def storage_retry(self) -> None:
        self.metrics.storage_retries.inc()

    @_never_raises
    def checkpoint_written(self, *, step: int) -> None:
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_step.set(step)
        self.metrics.last_checkpoint_at = time.time()
        self.metrics.checkpoint_time.set(self.metrics.last_checkpoint_at)

    @_never_raises
    def resumed(self, *, step: int) -> None:
        self.metrics.resumes.inc()
        self.metrics.resumed_from.set(step)
        self.metrics.checkpoint_step.set(step)
        self.metrics.train_step.set(step)

    @_never_raises
    def evaluation(self, metrics: Mapping[str, float | None]) -> None:
        for name, value in metrics.items():
            if value is not None:
                # The job reports the base model's row with a "base_" prefix on the same names.
                base = name.startswith(BASELINE_PREFIX)
                self.metrics.evaluation_score(name.removeprefix(BASELINE_PREFIX),
                                              "base" if base else "tuned").set(value)

    @_never_raises
    def finished(self, *, exit_code: int) -> None:
        """Record the outcome and push it synchronously (bounded by the push timeout)."""
        m = self.metrics
        m.exit_code.set(exit_code)
        m.failed.set(1 if exit_code else 0)
        if exit_code == 0:
            m.last_success.set(time.time())
        final_phase = "failed" if exit_code else "done"
        if self._phase != final_phase:
            for name, gauge in m.phase.items():
                gauge.set(1 if name == final_phase else 0)
            m.phase_started.set(time.time())
            self._phase = final_phase
        self._finished = True
        if self.pusher is not None:
            self.pusher.push_final()


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
    failed = []
    for subject_id in subject_ids:
        try:
            prometheus_client.delete_from_gateway(url, PUSH_JOB, grouping_key(batch_id, subject_id),
                                                  timeout=timeout, handler=push_handler())
        except Exception as exc:  # noqa: BLE001 - try every group, report the failed ones
            log.warning("deleting Pushgateway group of %s/%s failed: %s", batch_id, subject_id, exc)
            failed.append(subject_id)
    return failed
