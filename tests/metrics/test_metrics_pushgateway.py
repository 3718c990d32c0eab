"""Pushing to a real Pushgateway (Debian prometheus-pushgateway on loopback): the outcome of a job
stays there after the job is gone, a dead gateway never fails the job, and the batch tooling can
delete a batch's groups."""

from __future__ import annotations

import time
import uuid

from metrics_support import free_port, samples_by_name, value, wait_until

from dreambooth_job import metrics
from dreambooth_job.events import TrainProgress
from dreambooth_job.metrics import PrometheusObserver, delete_batch_groups, pushed_groups


def unique_batch() -> str:
    return "batch-" + uuid.uuid4().hex[:8]


def pushed_value(pushgateway, name: str, batch_id: str, subject_id: str, **labels) -> float:
    return value(pushgateway.exposition(), name, job=metrics.PUSH_JOB, batch_id=batch_id,
                 subject_id=subject_id, **labels)


def short_job(observer: PrometheusObserver, fail: bool) -> None:
    with observer:
        observer.phase_started("download")
        observer.transfer(direction="download", num_bytes=1234, objects=2)
        observer.phase_finished("download", 0.5)
        observer.phase_started("validate")
        if fail:
            observer.phase_started("failed")
            observer.finished(exit_code=2)
            return
        observer.phase_started("train")
        observer.train_progress(TrainProgress(step=3, max_steps=3, loss=0.5, instance_loss=0.3,
                                              prior_loss=0.2, learning_rate=1e-5,
                                              steps_per_second=1.0, images_per_second=2.0,
                                              eta_seconds=0.0))
        observer.phase_started("done")
        observer.finished(exit_code=0)


def test_a_successful_job_leaves_its_final_metrics_on_the_gateway(pushgateway, make_config):
    batch = unique_batch()
    short_job(PrometheusObserver(make_config(pushgateway=pushgateway.url, batch_id=batch,
                                             subject_id="dog")), fail=False)

    group = pushgateway.group(job=metrics.PUSH_JOB, batch_id=batch, subject_id="dog")
    assert group is not None and group["last_push_successful"]
    assert pushed_value(pushgateway, "dreambooth_exit_code", batch, "dog") == 0
    assert pushed_value(pushgateway, "dreambooth_phase", batch, "dog", phase="done") == 1
    assert pushed_value(pushgateway, "dreambooth_train_step", batch, "dog") == 3
    assert pushed_value(pushgateway, "dreambooth_last_success_timestamp_seconds", batch, "dog") > 0
    assert pushed_value(pushgateway, "dreambooth_storage_bytes_total", batch, "dog",
                        direction="download") == 1234
    assert pushed_value(pushgateway, "dreambooth_pushgateway_failures_total", batch, "dog") == 0


def test_a_failed_job_leaves_its_failure_on_the_gateway(pushgateway, make_config):
    batch = unique_batch()
    short_job(PrometheusObserver(make_config(pushgateway=pushgateway.url, batch_id=batch,
                                             subject_id="cat")), fail=True)

    assert pushed_value(pushgateway, "dreambooth_exit_code", batch, "cat") == 2
    assert pushed_value(pushgateway, "dreambooth_failed", batch, "cat") == 1
    assert pushed_value(pushgateway, "dreambooth_phase", batch, "cat", phase="failed") == 1
    assert pushed_value(pushgateway, "dreambooth_phase", batch, "cat", phase="validate") == 0
    assert pushed_value(pushgateway, "dreambooth_last_success_timestamp_seconds", batch, "cat") == 0


def test_phase_changes_are_pushed_while_the_job_runs(pushgateway, make_config):
    batch = unique_batch()
    observer = PrometheusObserver(make_config(pushgateway=pushgateway.url, batch_id=batch))
    observer.start()
    try:
        observer.phase_started("load_model")
        wait_until(lambda: pushed_value(pushgateway, "dreambooth_phase", batch, "dog",
                                        phase="load_model") == 1, 10, "the phase change push")
        assert pushed_value(pushgateway, "dreambooth_exit_code", batch, "dog") == -1
    finally:
        observer.close()


def test_a_job_outside_a_batch_is_grouped_by_subject_alone(pushgateway, make_config):
    subject = "solo-" + uuid.uuid4().hex[:6]
    short_job(PrometheusObserver(make_config(pushgateway=pushgateway.url, batch_id=None,
                                             subject_id=subject)), fail=False)
    assert pushgateway.group(job=metrics.PUSH_JOB, batch_id="", subject_id=subject) is not None
    assert delete_batch_groups(pushgateway.url, "", [subject]) == []
    assert pushgateway.group(job=metrics.PUSH_JOB, batch_id="", subject_id=subject) is None


def test_an_unreachable_gateway_is_counted_and_never_fails_the_job(make_config, caplog):
    dead = f"http://127.0.0.1:{free_port()}"
    observer = PrometheusObserver(make_config(pushgateway=dead), push_timeout=1)
    started = time.monotonic()
    short_job(observer, fail=False)
    assert time.monotonic() - started < 5
    assert "push to Pushgateway" in caplog.text
    samples = samples_by_name(observer.exposition().decode())
    assert value(samples, "dreambooth_pushgateway_failures_total") >= 1
    assert value(samples, "dreambooth_exit_code") == 0


def test_delete_batch_groups_removes_only_that_batch(pushgateway, make_config):
    batch, other = unique_batch(), unique_batch()
    for batch_id, subject in ((batch, "dog"), (batch, "cat"), (other, "dog")):
        short_job(PrometheusObserver(make_config(pushgateway=pushgateway.url, batch_id=batch_id,
                                                 subject_id=subject)), fail=False)
    assert {g["subject_id"] for g in pushed_groups(pushgateway.url, batch)} == {"dog", "cat"}

    assert delete_batch_groups(pushgateway.url, batch, ["dog", "cat", "never-ran"]) == []
    assert pushed_groups(pushgateway.url, batch) == []
    assert [g["subject_id"] for g in pushed_groups(pushgateway.url, other)] == ["dog"]

    assert delete_batch_groups(pushgateway.url, other) == []  # found on the gateway
    assert pushed_groups(pushgateway.url, other) == []


def test_delete_batch_groups_reports_what_it_could_not_delete():
    dead = f"http://127.0.0.1:{free_port()}"
    assert delete_batch_groups(dead, "b1", ["dog", "cat"], timeout=1) == ["dog", "cat"]
