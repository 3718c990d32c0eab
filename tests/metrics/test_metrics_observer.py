"""PrometheusObserver driven through whole fake job lifecycles, read back through prometheus-client's
parser, and its HTTP server on a real loopback port."""

from __future__ import annotations

import math
import re
import sys
import types
import urllib.request

import pytest
from metrics_support import (
    documented_metrics,
    family_types,
    free_port,
    http_get,
    samples_by_name,
    value,
)

from dreambooth_job import metrics
from dreambooth_job.events import PHASES, TrainProgress
from dreambooth_job.metrics import MemoryCollector, PrometheusObserver

IDS = {"job_id": "dog-0001", "subject_id": "dog", "batch_id": "nightly"}
JOB_PHASES = ("download", "validate", "load_model", "class_images", "train", "sample", "evaluate",
              "upload")
# The values each non-id label may take: anything else would be an unbounded label set.
ALLOWED_LABEL_VALUES = {
    "phase": set(PHASES), "part": set(metrics.LOSS_PARTS), "direction": set(metrics.DIRECTIONS),
    "source": set(metrics.CLASS_IMAGE_SOURCES),
    "score": {"dino", "clip_i", "clip_t", "pres", "div", "div_dino"}, "model": {"tuned", "base"},
    "version": {re.compile(r"^\d+\.\d+")}, "device": {re.compile(r"^(cpu|cuda:\d+)$")},
}


def progress(step: int, max_steps: int = 20) -> TrainProgress:
    return TrainProgress(step=step, max_steps=max_steps, loss=1.0 / step, instance_loss=0.6 / step,
                         prior_loss=0.4 / step, learning_rate=5e-6, steps_per_second=2.0,
                         images_per_second=4.0, eta_seconds=(max_steps - step) / 2.0)


def run_lifecycle(observer: PrometheusObserver, fail_in: str | None = None, exit_code: int = 2):
    """Drive a job's events like job.py does; yields the parsed exposition after each event."""
    for phase in JOB_PHASES:
        observer.phase_started(phase)
        yield samples_by_name(observer.exposition().decode())
        if phase == fail_in:
            observer.phase_started("failed")
            observer.finished(exit_code=exit_code)
            yield samples_by_name(observer.exposition().decode())
            return
        if phase == "download":
            observer.transfer(direction="download", num_bytes=5_000, objects=4)
            observer.storage_retry()
        elif phase == "class_images":
            observer.class_images(generated=3, reused=5)
        elif phase == "train":
            observer.resumed(step=5)
            for step in range(6, 21):
                observer.train_progress(progress(step))
                if step % 5 == 0:
                    observer.checkpoint_written(step=step)
                yield samples_by_name(observer.exposition().decode())
        elif phase == "evaluate":
            scores = {"dino": 0.6, "clip_i": 0.8, "clip_t": 0.3, "pres": 0.5, "div": None,
                      "div_dino": 0.4}
            observer.evaluation({**scores, **{"base_" + k: v and v / 2 for k, v in scores.items()}})
        elif phase == "upload":
            observer.transfer(direction="upload", num_bytes=9_000, objects=7)
        observer.phase_finished(phase, 1.5)
        yield samples_by_name(observer.exposition().decode())
    observer.phase_started("done")
    observer.finished(exit_code=0)
    yield samples_by_name(observer.exposition().decode())


def current_phase(samples) -> str:
    (phase,) = [s.labels["phase"] for s in samples["dreambooth_phase"] if s.value == 1]
    return phase


def test_successful_job_moves_forward_and_ends_with_its_outcome(make_config):
    observer = PrometheusObserver(make_config())
    snapshots = list(run_lifecycle(observer))

    order = [current_phase(s) for s in snapshots]
    positions = [PHASES.index(p) for p in order]
    assert positions == sorted(positions) and order[-1] == "done"
    steps = [value(s, "dreambooth_train_step") for s in snapshots]
    assert steps == sorted(steps) and steps[-1] == 20
    for name in ("dreambooth_storage_bytes_total", "dreambooth_class_images_total",
                 "dreambooth_checkpoints_written_total", "dreambooth_storage_retries_total"):
        totals = [sum(x.value for x in s[name]) for s in snapshots]
        assert totals == sorted(totals), name

    final = snapshots[-1]
    assert value(final, "dreambooth_exit_code") == 0
    assert value(final, "dreambooth_failed") == 0
    assert value(final, "dreambooth_last_success_timestamp_seconds") > 1.7e9
    assert value(final, "dreambooth_train_loss", part="prior") == pytest.approx(0.02)
    assert value(final, "dreambooth_train_eta_seconds") == 0
    assert value(final, "dreambooth_class_images_total", source="reused") == 5
    assert value(final, "dreambooth_storage_objects_total", direction="upload") == 7
    assert value(final, "dreambooth_storage_bytes_total", direction="download") == 5_000
    assert value(final, "dreambooth_checkpoints_written_total") == 3  # steps 10, 15, 20
    assert value(final, "dreambooth_checkpoint_last_step") == 20
    assert 0 <= value(final, "dreambooth_checkpoint_age_seconds") < 60
    assert value(final, "dreambooth_resumed_from_step") == 5
    assert value(final, "dreambooth_evaluation_score", score="dino", model="tuned") == 0.6
    assert value(final, "dreambooth_evaluation_score", score="dino", model="base") == 0.3
    assert len(final["dreambooth_evaluation_score"]) == 10  # "div" is None: no series
    assert {s.labels["phase"] for s in final["dreambooth_phase_duration_seconds"]} == set(JOB_PHASES)
    assert all(s.labels[k] == v for samples in final.values() for s in samples
               for k, v in IDS.items())


def test_every_documented_metric_is_exposed_with_its_type_and_labels(make_config):
    observer = PrometheusObserver(make_config())
    *_, final = run_lifecycle(observer)
    exposed_types = family_types(observer.exposition().decode())
    documented = documented_metrics()

    assert set(exposed_types) == set(documented)
    for name, doc in documented.items():
        assert exposed_types[name] == doc["type"], name
        samples = final.get(name)
        assert samples, f"{name} has no samples at the end of a job"
        for sample in samples:
            assert set(sample.labels) == set(metrics.ID_LABELS) | doc["labels"], name


def test_label_sets_are_bounded(make_config):
    observer = PrometheusObserver(make_config())
    *_, final = run_lifecycle(observer)
    for name, samples in final.items():
        assert len(samples) <= 12, f"{name} has {len(samples)} series"
        for sample in samples:
            for label, val in sample.labels.items():
                if label in metrics.ID_LABELS:
                    continue
                allowed = ALLOWED_LABEL_VALUES[label]
                assert val in allowed or any(isinstance(a, re.Pattern) and a.match(val)
                                             for a in allowed), (name, label, val)


def test_failed_job_reports_failed_phase_and_exit_code(make_config):
    observer = PrometheusObserver(make_config())
    *_, final = run_lifecycle(observer, fail_in="validate", exit_code=2)
    assert current_phase(final) == "failed"
    assert value(final, "dreambooth_exit_code") == 2
    assert value(final, "dreambooth_failed") == 1
    assert value(final, "dreambooth_last_success_timestamp_seconds") == 0
    assert math.isnan(value(final, "dreambooth_checkpoint_age_seconds"))


def test_finished_sets_the_final_phase_even_when_the_job_did_not(make_config):
    observer = PrometheusObserver(make_config())
    observer.phase_started("train")
    observer.finished(exit_code=143)
    samples = samples_by_name(observer.exposition().decode())
    assert current_phase(samples) == "failed"
    assert value(samples, "dreambooth_exit_code") == 143


def test_exit_code_is_minus_one_while_running(make_config):
    observer = PrometheusObserver(make_config())
    observer.phase_started("download")
    samples = samples_by_name(observer.exposition().decode())
    assert value(samples, "dreambooth_exit_code") == -1
    assert value(samples, "dreambooth_failed") == 0


def test_bad_events_are_ignored_without_raising(make_config, caplog):
    observer = PrometheusObserver(make_config())
    observer.phase_started("nonsense")
    observer.transfer(direction="sideways", num_bytes=1, objects=1)
    observer.train_progress(None)  # type: ignore[arg-type]
    observer.class_images(generated=-1, reused=0)  # counters refuse to go down
    text = observer.exposition().decode()
    assert "nonsense" not in text and "sideways" not in text
    assert "metrics:" in caplog.text


def test_ids_fall_back_to_the_config_and_instance_data(make_config):
    observer = PrometheusObserver(make_config(job_id=None, subject_id=None, batch_id=None,
                                              instance_data="s3://photos/subjects/rex/"))
    assert observer.metrics.ids == {"job_id": "rex", "subject_id": "rex", "batch_id": ""}
    explicit = PrometheusObserver(make_config(), job_id="rex-1234abcd", subject_id="rex")
    assert explicit.metrics.ids["job_id"] == "rex-1234abcd"
    assert explicit.group == {"batch_id": "nightly", "subject_id": "rex"}


# ----------------------------------------------------------------------------------------------
# Memory.

def test_memory_on_cpu_reports_resident_memory(make_config):
    samples = samples_by_name(PrometheusObserver(make_config()).exposition().decode())
    rss = value(samples, "dreambooth_process_resident_memory_bytes")
    assert 10e6 < rss < 64e9
    assert value(samples, "dreambooth_device_memory_allocated_bytes", device="cpu") > 0
    assert value(samples, "dreambooth_process_peak_resident_memory_bytes") >= rss


class FakeCuda:
    initialized = True

    def is_available(self):
        return True

    def is_initialized(self):
        return self.initialized

    def device_count(self):
        return 2

    def memory_allocated(self, i):
        return 1000 + i

    def memory_reserved(self, i):
        return 2000 + i

    def max_memory_allocated(self, i):
        return 3000 + i

    def max_memory_reserved(self, i):
        return 4000 + i


def collected(collector) -> dict[str, list]:
    return {f.name: f.samples for f in collector.collect()}


def test_memory_on_cuda_reads_the_allocator_per_device(monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    families = collected(MemoryCollector(IDS))
    allocated = {s.labels["device"]: s.value
                 for s in families["dreambooth_device_memory_allocated_bytes"]}
    assert allocated == {"cuda:0": 1000, "cuda:1": 1001}
    assert families["dreambooth_device_memory_peak_reserved_bytes"][1].value == 4001
    assert families["dreambooth_process_resident_memory_bytes"][0].value > 0

    cuda.initialized = False  # asking an uninitialized runtime would create a context
    families = collected(MemoryCollector(IDS))
    assert [s.value for s in families["dreambooth_device_memory_reserved_bytes"]] == [0, 0]


def test_memory_without_torch_imported_never_imports_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    families = collected(MemoryCollector(IDS))
    assert [s.labels["device"] for s in families["dreambooth_device_memory_allocated_bytes"]] == ["cpu"]
    assert "torch" not in sys.modules


def test_a_broken_cuda_runtime_falls_back_to_cpu(monkeypatch):
    cuda = FakeCuda()
    cuda.memory_allocated = lambda i: 1 / 0
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    families = collected(MemoryCollector(IDS))
    assert [s.labels["device"] for s in families["dreambooth_device_memory_allocated_bytes"]] == ["cpu"]


# ----------------------------------------------------------------------------------------------
# The HTTP server.

def test_server_serves_metrics_and_healthz_until_closed(make_config):
    port = free_port()
    with PrometheusObserver(make_config(metrics_port=port), host="127.0.0.1") as observer:
        observer.phase_started("download")
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert value(samples_by_name(body), "dreambooth_phase", phase="download") == 1
        assert http_get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        assert http_get(f"http://127.0.0.1:{port}/nope")[0] == 404
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_port_zero_serves_nothing(make_config):
    with PrometheusObserver(make_config(metrics_port=0)) as observer:
        assert observer.server is None


def test_a_taken_port_is_logged_and_the_job_goes_on(make_config, caplog):
    port = free_port()
    with (PrometheusObserver(make_config(metrics_port=port), host="127.0.0.1"),
          PrometheusObserver(make_config(metrics_port=port), host="127.0.0.1") as second):
        assert second.server is None
        second.phase_started("train")
    assert "cannot serve metrics" in caplog.text


def test_close_is_idempotent(make_config):
    port = free_port()
    observer = PrometheusObserver(make_config(metrics_port=port), host="127.0.0.1")
    observer.start()
    observer.close()
    observer.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_module_docstring_example_runs():
    import doctest

    assert doctest.testmod(metrics).failed == 0
