"""End to end: a real `dreambooth-job train` subprocess on the CPU, scraped while it runs, and the
real Pushgateway holding its outcome after it exited, for a success (on each family's tiny model)
and for bad input."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import every_family
from metrics_support import (
    REPO,
    documented_metrics,
    free_port,
    http_get,
    samples_by_name,
    value,
)

from dreambooth_job import metrics
from dreambooth_job.events import PHASES

if not (REPO / "dreambooth_job" / "job.py").exists():
    pytest.skip("dreambooth_job/job.py (the train job) is not written yet", allow_module_level=True)

pytestmark = pytest.mark.slow

STEPS = 6
FIRST_SCRAPE_WITHIN = 90  # seconds: imports, then the server starts before the download
NEVER_SERVED = ("the job never answered on /metrics: job.run must wrap the run in "
                "PrometheusObserver (see dreambooth_job/metrics/)")
# Only what --evaluate adds may be missing from a run without it.
NEEDS_EVALUATE = {"dreambooth_evaluation_score"}


def command() -> list[str]:
    script = Path(sys.executable).with_name("dreambooth-job")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dreambooth_job.cli"]


def train_args(tiny_model, photos, tmp_path, port, pushgateway, batch, subject,
               steps: int = STEPS) -> list[str]:
    return [*command(), "train", "--instance-data", str(photos), "--class-noun", "dog",
            "--output", str(tmp_path / "run"), "--base-model", str(tiny_model),
            "--cache-dir", str(tmp_path / "cache"), "--class-data", str(tmp_path / "class-cache"),
            "--resolution", "64", "--max-train-steps", str(steps), "--log-every", "1",
            "--num-class-images", "2", "--sample-steps", "2", "--num-validation-images", "1",
            "--validation-prompt", "a {identifier} {class_noun}", "--checkpoint-every", "2",
            "--metrics-port", str(port), "--pushgateway", pushgateway.url,
            "--batch-id", batch, "--subject-id", subject, "--log-format", "json"]


def run_and_scrape(args: list[str], port: int, timeout: float = 300,
                   on_scrape=None) -> tuple[int, list, str]:
    """Run the job, scraping /metrics as often as it answers; (exit code, scrapes, log).
    `on_scrape(samples, process)` sees each scrape."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    scrapes = []
    started = time.monotonic()
    try:
        while process.poll() is None and time.monotonic() < started + timeout:
            if not scrapes and time.monotonic() > started + FIRST_SCRAPE_WITHIN:
                break  # the server should be up long before: don't wait for the whole run
            try:
                status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                if status == 200:
                    scrapes.append(samples_by_name(body))
                    if on_scrape is not None:
                        on_scrape(scrapes[-1], process)
            except OSError:
                pass  # not serving yet, or already closed
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate()[0].decode(errors="replace")
    return process.returncode, scrapes, output


@every_family
def test_a_training_run_exposes_every_metric_while_it_runs_and_pushes_its_outcome(
        family_model, photo_dir, tmp_path, pushgateway):
    batch, port = "e2e-" + uuid.uuid4().hex[:8], free_port()
    code, scrapes, output = run_and_scrape(
        train_args(family_model.path, photo_dir, tmp_path, port, pushgateway, batch, "dog"), port)
    assert scrapes, NEVER_SERVED
    assert code == 0, output[-3000:]
    assert len(scrapes) >= 3, f"only {len(scrapes)} scrapes answered"

    # Scrapes before the first phase starts show no phase at all (-1 here).
    order = [next((PHASES.index(s.labels["phase"]) for s in scrape["dreambooth_phase"]
                   if s.value == 1), -1) for scrape in scrapes]
    assert order == sorted(order)
    assert order[0] <= PHASES.index("load_model"), "the server started late"
    assert len(set(order) - {-1}) >= 3
    steps = [value(scrape, "dreambooth_train_step") for scrape in scrapes]
    assert steps == sorted(steps) and len(set(steps)) >= 2

    seen = {name for scrape in scrapes for name, samples in scrape.items() if samples}
    documented = documented_metrics()
    assert set(documented) - NEEDS_EVALUATE <= seen
    for scrape in scrapes:
        for name, samples in scrape.items():
            assert len(samples) <= 12, name
            for sample in samples:
                extra = set(sample.labels) - set(metrics.ID_LABELS)
                assert extra == documented[name]["labels"], name
                assert sample.labels["batch_id"] == batch and sample.labels["subject_id"] == "dog"

    pushed = pushgateway.exposition()
    group = {"job": metrics.PUSH_JOB, "batch_id": batch, "subject_id": "dog"}
    assert value(pushed, "dreambooth_exit_code", **group) == 0
    assert value(pushed, "dreambooth_phase", phase="done", **group) == 1
    assert value(pushed, "dreambooth_train_step", **group) == STEPS
    assert value(pushed, "dreambooth_last_success_timestamp_seconds", **group) > 0
    assert value(pushed, "dreambooth_checkpoints_written_total", **group) >= 2  # steps 2 and 4


def test_a_run_failing_on_bad_input_leaves_its_failure_on_the_pushgateway(
        tiny_model, tmp_path, pushgateway):
    photos = tmp_path / "broken-photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"{i}.jpg").write_bytes(b"not a jpeg at all")
    batch, port = "e2e-" + uuid.uuid4().hex[:8], free_port()
    code, _, output = run_and_scrape(
        train_args(tiny_model, photos, tmp_path, port, pushgateway, batch, "ghost"), port)
    assert code == 2, output[-3000:]

    pushed = pushgateway.exposition()
    group = {"job": metrics.PUSH_JOB, "batch_id": batch, "subject_id": "ghost"}
    assert value(pushed, "dreambooth_exit_code", **group) == 2
    assert value(pushed, "dreambooth_failed", **group) == 1
    assert value(pushed, "dreambooth_phase", phase="failed", **group) == 1
    assert value(pushed, "dreambooth_last_success_timestamp_seconds", **group) == 0


def test_a_terminated_run_pushes_exit_code_143(tiny_model, photo_dir, tmp_path, pushgateway):
    batch, port = "e2e-" + uuid.uuid4().hex[:8], free_port()

    sent = []

    def stop_once_training(samples, process) -> None:
        if not sent and value(samples, "dreambooth_train_step") >= 1:
            process.send_signal(signal.SIGTERM)  # once: a second signal may mean "stop now"
            sent.append(True)

    code, scrapes, output = run_and_scrape(
        train_args(tiny_model, photo_dir, tmp_path, port, pushgateway, batch, "dog", steps=5000),
        port, on_scrape=stop_once_training)
    assert scrapes, NEVER_SERVED
    assert code == 143, output[-3000:]

    pushed = pushgateway.exposition()
    group = {"job": metrics.PUSH_JOB, "batch_id": batch, "subject_id": "dog"}
    assert value(pushed, "dreambooth_exit_code", **group) == 143
    assert value(pushed, "dreambooth_phase", phase="failed", **group) == 1
    assert 1 <= value(pushed, "dreambooth_train_step", **group) < 5000
    assert value(pushed, "dreambooth_checkpoints_written_total", **group) >= 1
