"""The job's metric definitions: one registry per job, every metric object documented by its help
text (docs/metrics.md lists them, one line each, and a test keeps both equal).

    >>> from prometheus_client import generate_latest
    >>> m = JobMetrics("j1", "dog")
    >>> m.train_step.set(3)
    >>> b'dreambooth_train_step{batch_id="",job_id="j1",subject_id="dog"} 3.0' in generate_latest(m.registry)
    True

Nothing here serves, pushes or listens to the job: observer.py updates these objects from the job's
events, exposition.py serves and pushes the registry.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from collections.abc import Mapping
from typing import ClassVar

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dreambooth_job import __version__
from dreambooth_job.events import PHASES
from dreambooth_job.redaction import redact

log = logging.getLogger(__name__)

# `_created` series would double every counter's series count for no dashboard use, and would be
# exposed as undocumented gauges in the text format. The switch is process-wide: the job owns its
# process.
prometheus_client.disable_created_metrics()

ID_LABELS = ("job_id", "subject_id", "batch_id")
"""Labels on every metric; constant for the life of a job, so label sets stay bounded."""
LOSS_PARTS = ("total", "instance", "prior")
DIRECTIONS = ("download", "upload")
CLASS_IMAGE_SOURCES = ("generated", "reused")


class JobMetrics:
    """The metric objects of one job, in a registry of their own, bound to the job's ids."""

    def __init__(self, job_id: str, subject_id: str, batch_id: str | None = None):
        self.registry = CollectorRegistry()
        self.ids = {"job_id": redact(job_id), "subject_id": redact(subject_id),
                    "batch_id": redact(batch_id or "")}

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, [*ID_LABELS, *labels], registry=self.registry)

        def counter(name: str, doc: str, *labels: str) -> Counter:
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
        self.notify_failures = counter(
            "dreambooth_notify_failures_total",
            "Completion calls (--notify-url) given up on after their retries (logged, never "
            "fatal).").labels(**ids)

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

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family(name, per_device=name.startswith("dreambooth_device"))
                for name in self.FAMILIES]

    def collect(self) -> list[GaugeMetricFamily]:
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
