"""Scenario 6 of issue 26, continued: on the real apiserver and controllers, label selectors are
served by the server and `jobs_by_name`, `status`, `report` and `cancel` see exactly the labelled
Jobs; a finished Job's ttlSecondsAfterFinished deletes it and its pods, after which `status` reads
as the docs say; `submit(replace=True)` waits out the foreground deletion of the finished Job it
replaces; a created Job has the uid, resourceVersion and creationTimestamp the server assigns.

The selector and replace tests run nothing: their pods ask for a node label no node has, so they
stay Pending. The TTL test trains the tiny model once (QUICK_OPTIONS)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from kubernetes import client
from workloads import (
    QUICK_OPTIONS,
    cluster_settings,
    create_s3_secret,
    job_condition,
    upload_subject,
    wait_until,
)

from dreambooth_job.cli import main
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.k8s import BATCH_LABEL, SUBJECT_LABEL, Connection, JobSpec, job_name, load_batch, submit
from dreambooth_job.k8s.client import jobs_by_name, read_job
from dreambooth_job.k8s.errors import JobNotFoundError, JobStillRunningError
from dreambooth_job.k8s.feed import submit_batch
from dreambooth_job.k8s.status import JOB_NAME_LABEL, Phase, get_status
from dreambooth_job.storage import places

pytestmark = pytest.mark.cluster

# No node carries this label: the scheduler never binds the pods, so nothing runs.
UNSCHEDULABLE = {"dreambooth-job.test/nowhere": "true"}
SUBJECTS = ("dog", "cat")
TTL_SECONDS = 3  # small, yet longer than a poll of the finished Job takes on a loaded machine


def run(*args: object, expect: int = 0) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


def write_batch(path: Path, batch_id: str, bucket: str, subjects: tuple[str, ...], **defaults) -> Path:
    path.write_text(yaml.safe_dump({
        "defaults": {"batch_id": batch_id, "output": f"s3://{bucket}/runs/{batch_id}/{{id}}/", **defaults},
        "subjects": [{"id": s, "instance_data": f"s3://{bucket}/photos/{s}/", "class_noun": "dog"}
                     for s in subjects]}))
    return path


def pod_names(conn: Connection, namespace: str, selector: str) -> set[str]:
    return {p.metadata.name for p in conn.core.list_namespaced_pod(namespace, label_selector=selector).items}


@pytest.fixture
def conn(kubeconfig) -> Connection:
    return Connection.from_environment(str(kubeconfig))


def test_selectors_pick_exactly_the_labelled_jobs(cluster, namespace, conn, bucket, tmp_path):
    settings = cluster_settings(namespace, node_selector=UNSCHEDULABLE)
    files = {b: write_batch(tmp_path / f"{b}.yaml", b, bucket, SUBJECTS) for b in ("night-a", "night-b")}
    for path in files.values():
        submit_batch(load_batch(path), settings, connection=conn)
    lone = submit(JobSpec(train=TrainConfig(instance_data=f"s3://{bucket}/photos/dog/", class_noun="dog",
                                            output=f"s3://{bucket}/runs/dog/", subject_id="dog"),
                          cluster=settings), connection=conn)
    names = {b: {job_name(s, b) for s in SUBJECTS} for b in files}

    # The server filters (kmock returned every Job), and the client's views agree with it.
    served = conn.batch.list_namespaced_job(namespace, label_selector=f"{BATCH_LABEL}=night-a").items
    assert {j.metadata.name for j in served} == names["night-a"]
    assert set(jobs_by_name({BATCH_LABEL: "night-a"}, namespace, connection=conn)) == names["night-a"]
    assert set(jobs_by_name({SUBJECT_LABEL: "dog"}, namespace, connection=conn)) == {
        job_name("dog", "night-a"), job_name("dog", "night-b"), lone.name}
    # The Job controller's pods carry the batch label that batch_status selects them by.
    batch_pods = wait_until(lambda: len(pod_names(conn, namespace, f"{BATCH_LABEL}=night-a")) == 2
                            and pod_names(conn, namespace, f"{BATCH_LABEL}=night-a"), 60, "night-a's pods")
    assert {name.rsplit("-", 1)[0] for name in batch_pods} == names["night-a"]

    by_batch = json.loads(run("status", "--batch", files["night-a"], "-o", "json"))["subjects"]
    assert {s["name"] for s in by_batch} == names["night-a"]
    assert {(s["phase"], s["batch_id"]) for s in by_batch} == {("pending", "night-a")}
    by_label = json.loads(run("status", "-l", f"{BATCH_LABEL}=night-b", "-o", "json"))["subjects"]
    assert {s["name"] for s in by_label} == names["night-b"]
    report_uri = f"s3://{bucket}/reports/night-a/"
    run("report", "--batch", files["night-a"], "--output", report_uri)
    report = json.loads(places.read_bytes(places.join(report_uri, "report.json")))
    assert {row["name"] for row in report["subjects"]} == names["night-a"]
    assert report["summary"] == {"pending": 2}

    run("cancel", "--batch", files["night-a"])
    wait_until(lambda: not jobs_by_name({BATCH_LABEL: "night-a"}, namespace, connection=conn), 60,
               "night-a's Jobs to be deleted")
    assert set(jobs_by_name({BATCH_LABEL: "night-b"}, namespace, connection=conn)) == names["night-b"]
    assert read_job(lone.name, namespace, connection=conn).metadata.uid == lone.uid


def test_replace_waits_for_the_foreground_deletion_of_the_finished_job(cluster, namespace, conn, bucket):
    settings = cluster_settings(namespace, node_selector=UNSCHEDULABLE, active_deadline_seconds=1)
    spec = JobSpec(train=TrainConfig(instance_data=f"s3://{bucket}/photos/dog/", class_noun="dog",
                                     output=f"s3://{bucket}/runs/dog/", subject_id="dog"), cluster=settings)
    first = submit(spec, connection=conn)
    stored = read_job(first.name, namespace, connection=conn)
    # What the server assigns, and kmock did not: the client reports the server's uid.
    assert first.created and first.uid == stored.metadata.uid
    assert stored.metadata.resource_version and stored.metadata.creation_timestamp
    with pytest.raises(JobStillRunningError):
        submit(spec, replace=True, connection=conn)

    failed = wait_until(lambda: job_condition(read_job(first.name, namespace, connection=conn), "Failed"),
                        60, "activeDeadlineSeconds to fail the Job")
    assert failed.reason == "DeadlineExceeded"
    status = get_status(first.name, namespace, connection=conn)
    assert status.phase is Phase.FAILED and status.failure_reason.startswith("DeadlineExceeded")

    second = submit(spec, replace=True, connection=conn)

    assert second.created and second.replaced and second.uid != first.uid
    assert read_job(first.name, namespace, connection=conn).metadata.uid == second.uid


def test_ttl_deletes_the_finished_job_and_its_pods_then_status_reads_the_output(
        cluster, namespace, conn, bucket, photo_dir, tiny_model_uri, tmp_path):
    create_s3_secret(cluster.api, namespace)
    upload_subject(bucket, "dog", photo_dir)
    batch_file = write_batch(tmp_path / "night-ttl.yaml", "night-ttl", bucket, ("dog",),
                             base_model=tiny_model_uri, **QUICK_OPTIONS)
    config = load_batch(batch_file).subjects[0]
    settings = cluster_settings(namespace, ttl_seconds_after_finished=TTL_SECONDS)
    job = submit(JobSpec(train=config, cluster=settings), connection=conn)
    assert read_job(job.name, namespace, connection=conn).spec.ttl_seconds_after_finished == TTL_SECONDS
    seen_pods: set[str] = set()

    def complete() -> client.V1JobCondition | None:
        seen_pods.update(pod_names(conn, namespace, f"{JOB_NAME_LABEL}={job.name}"))
        try:
            return job_condition(read_job(job.name, namespace, connection=conn), "Complete")
        except JobNotFoundError:
            pytest.fail(f"job {job.name} was deleted before it was seen Complete")

    wait_until(complete, 300, f"job {job.name} to complete")
    assert seen_pods, "the Job ran no pod"

    def deleted() -> bool:
        try:
            read_job(job.name, namespace, connection=conn)
        except JobNotFoundError:
            return True
        return False

    wait_until(deleted, 60, "the TTL controller to delete the finished Job")
    wait_until(lambda: not pod_names(conn, namespace, f"{JOB_NAME_LABEL}={job.name}"), 60,
               "the garbage collector to delete the Job's pods")
    with pytest.raises(JobNotFoundError):
        get_status(job.name, namespace, connection=conn)
    assert "not found" in run("status", job.name, expect=1)
    # operator-guide: with the Job gone, a batch's subject reads from its output in S3.
    (row,) = json.loads(run("status", "--batch", batch_file, "-o", "json"))["subjects"]
    assert (row["name"], row["phase"]) == (job.name, "succeeded")
    assert row["final_loss"] is not None and row["output"] == config.output
