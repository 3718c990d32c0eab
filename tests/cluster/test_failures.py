"""How a subject's Job fails on a real control plane, by the job's exit code: bad input (2) fails the
Job at once through its podFailurePolicy, with the job's one-line error in `dreambooth-job status`;
a temporary failure (75) is retried after the Job controller's backoff until backoffLimit; a pod
killed with SIGKILL (137) is replaced by one that takes the output lease over at once and
finishes."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from job_pods import (
    CHECKPOINT_WRITTEN,
    RESUMED,
    PodRecorder,
    container_log,
    finished_job,
    kill_container,
    pod_condition,
    status_cli,
    subject_config,
    terminated,
    timestamp,
    wait_for_log,
)
from workloads import cluster_settings, create_s3_secret, job_condition, upload_subject

from dreambooth_job.devtools import s3server
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.k8s import client as k8s
from dreambooth_job.k8s.manifest import JobSpec
from dreambooth_job.k8s.status import Phase, get_status
from dreambooth_job.storage import places as storage
from dreambooth_job.storage.lease import LEASE_FILE

pytestmark = pytest.mark.cluster

# The Job controller's delay before the pod after a first failure (pkg/controller/job:
# DefaultJobPodFailureBackOff), doubling with each further one.
CONTROLLER_BACKOFF = timedelta(seconds=10)


@pytest.fixture
def connection(cluster, namespace, kubeconfig) -> k8s.Connection:
    """The project's client as a user has it (the test's kubeconfig), with the S3 Secret in place."""
    create_s3_secret(cluster.api, namespace)
    return k8s.Connection.from_environment(kubeconfig=str(kubeconfig))


def test_bad_photos_fail_the_job_at_once_with_the_reason_in_status(
        cluster, namespace, connection, kubeconfig, bucket, tmp_path, tiny_model_uri):
    not_photos = tmp_path / "not-photos"
    not_photos.mkdir()
    for i in range(3):
        (not_photos / f"{i}.jpg").write_text("a text file, not a JPEG\n")
    photos = upload_subject(bucket, "bad", not_photos)
    train = subject_config(bucket, "bad", photos, tiny_model_uri)
    job = k8s.submit(JobSpec(train=train, cluster=cluster_settings(namespace)), connection=connection)

    with PodRecorder(cluster.api, namespace, job.name) as pods:
        failed = finished_job(connection, job.name, namespace, "Failed", timeout=180)
        [pod] = pods.pods()
        pod = pods.wait_until_terminated(pod, timeout=30)

    condition = job_condition(failed, "Failed")
    assert condition.reason == "PodFailurePolicy", condition
    assert "exit code 2 matching FailJob rule" in condition.message
    assert failed.status.failed == 1 and not failed.status.active
    state = terminated(pod)
    assert state["exitCode"] == ExitCode.INVALID_INPUT
    # The job's one line from its termination log, as the kubelet reported it.
    error = f"--instance-data {photos} has 0 valid photo(s), need at least 1"
    assert state["message"].startswith(error), state["message"]

    [shown] = json.loads(status_cli(kubeconfig, "-o", "json", job.name))["subjects"]
    assert shown["phase"] == "failed" and shown["retries"] == 0
    assert shown["failure_reason"].startswith(
        f"PodFailurePolicy: exit 2 ({ExitCode.INVALID_INPUT.description}): {error}")
    # The table's REASON column shows the job's own error too.
    header, row, summary = status_cli(kubeconfig, job.name).splitlines()
    assert row.split()[:3] == ["bad", "failed", "0"] and "PodFailurePolicy: exit 2" in row
    assert error[:40] in row
    assert summary == "1 subject(s): 1 failed"


def test_a_temporary_failure_is_retried_after_the_controllers_backoff_up_to_the_backoff_limit(
        cluster, namespace, connection, bucket, photo_dir, tiny_model_uri):
    photos = upload_subject(bucket, "later", photo_dir)
    train = subject_config(bucket, "later", photos, tiny_model_uri)
    # The pods' S3 endpoint has nothing listening: one attempt per request, then exit 75.
    unreachable = f"http://127.0.0.1:{s3server.free_port()}"
    settings = cluster_settings(namespace, s3_endpoint_url=unreachable, backoff_limit=1,
                                env=({"name": "AWS_MAX_ATTEMPTS", "value": "1"},))
    job = k8s.submit(JobSpec(train=train, cluster=settings), connection=connection)

    with PodRecorder(cluster.api, namespace, job.name) as pods:
        failed = finished_job(connection, job.name, namespace, "Failed", timeout=240)
        first, second = (pods.wait_until_terminated(p, timeout=30) for p in pods.wait_for_pods(2, 30))
        assert len(pods.pods()) == 2, "backoffLimit 1: one retry, no more"

    for pod in (first, second):
        state = terminated(pod)
        assert state["exitCode"] == ExitCode.RETRYABLE, state
        assert "S3 unreachable" in state["message"], state["message"]
    # The retry waited out the controller's backoff after the first pod ended.
    assert timestamp(second["metadata"]["creationTimestamp"]) - \
        timestamp(terminated(first)["finishedAt"]) >= CONTROLLER_BACKOFF
    assert failed.status.failed == 2
    assert job_condition(failed, "Failed").reason == "BackoffLimitExceeded"
    status = get_status(job.name, namespace, connection=connection)
    assert (status.phase, status.retries) == (Phase.FAILED, 1)
    assert "exit 75" in status.failure_reason and "S3 unreachable" in status.failure_reason


def test_a_pod_killed_mid_run_is_replaced_by_one_that_takes_the_lease_over_at_once(
        cluster, namespace, connection, bucket, photo_dir, tiny_model_uri):
    photos = upload_subject(bucket, "killed", photo_dir)
    # Another Job's lease would be waited for this long: the replacement must not wait at all.
    train = subject_config(bucket, "killed", photos, tiny_model_uri, max_train_steps=60,
                           checkpoint_every=10, lease_wait_seconds=600)
    job = k8s.submit(JobSpec(train=train, cluster=cluster_settings(namespace)), connection=connection)
    lease = storage.join(train.output, LEASE_FILE)

    with PodRecorder(cluster.api, namespace, job.name) as pods:
        [first] = pods.wait_for_pods(1, timeout=60)
        saved = int(wait_for_log(cluster.kubelet, first, CHECKPOINT_WRITTEN, timeout=240).group(2))
        kill_container(pods.current(first))
        killed = pods.wait_until_terminated(first, timeout=60)
        # No release, no checkpoint: the lease outlives the pod, keyed by the Job's controller-uid.
        assert json.loads(storage.read_bytes(lease))["job_uid"] == job.uid
        completed = finished_job(connection, job.name, namespace, "Complete", timeout=300)
        killed_pod, replacement = pods.pods()
        assert killed_pod["metadata"]["uid"] == first["metadata"]["uid"]
        replacement = pods.wait_until_terminated(replacement, timeout=30)

    assert terminated(killed)["exitCode"] == 128 + 9, terminated(killed)
    assert not pod_condition(killed, "DisruptionTarget"), "a kill is no disruption: it counts"
    assert completed.status.failed == 1 and completed.status.succeeded == 1
    assert timestamp(replacement["metadata"]["creationTimestamp"]) >= \
        timestamp(terminated(killed)["finishedAt"])
    assert terminated(replacement)["exitCode"] == ExitCode.OK

    log = container_log(cluster.kubelet, replacement)
    # The lease is keyed by the Job's controller-uid: the same Job's new pod takes it over at once.
    took_over = re.search(r"taking over the lease \S+ from \S+ \(([^)]*)\)", log)
    assert took_over and took_over.group(1) == "this Job's previous pod", log[-3000:]
    assert "holds the lease" not in log, "the replacement waited for the lease"
    resumed = re.search(RESUMED, log)
    assert resumed and int(resumed.group(2)) >= saved, log[-3000:]
    assert storage.exists(storage.join(train.output, "_SUCCESS"))
    assert not storage.exists(lease), "released once published"
