"""The job's events turned into metrics: `PrometheusObserver`, a JobObserver that updates the
metric objects of definitions.py and drives the server and pusher of exposition.py. See the
package's docstring for how the job uses it.
"""

from __future__ import annotations

import atexit
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Concatenate, ParamSpec, Self, TypeVar

from prometheus_client import CollectorRegistry, generate_latest

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.events import PHASES, JobObserver, TrainProgress
from dreambooth_job.metrics.definitions import DIRECTIONS, JobMetrics
from dreambooth_job.metrics.exposition import (
    DEFAULT_PUSH_TIMEOUT,
    MetricsServer,
    Pusher,
    grouping_key,
)

log = logging.getLogger(__name__)

BASELINE_PREFIX = "base_"

_Observer = TypeVar("_Observer", bound=JobObserver)
_Params = ParamSpec("_Params")


def _never_raises(method: Callable[Concatenate[_Observer, _Params], None],
                  ) -> Callable[Concatenate[_Observer, _Params], None]:
    @functools.wraps(method)
    def wrapper(self: _Observer, /, *args: _Params.args, **kwargs: _Params.kwargs) -> None:
        try:
            return method(self, *args, **kwargs)
        except Exception:  # observers must not raise into the job
            log.warning("metrics: %s failed", method.__name__, exc_info=True)

    return wrapper


class PrometheusObserver(JobObserver):
    """Turns the job's events into metrics, serves them and pushes them (see the package docs)."""

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

    def __exit__(self, *exc_info: object) -> None:
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
    def notify_failed(self) -> None:
        self.metrics.notify_failures.inc()

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
