"""Job status: the phase rules on API-shaped dicts, then get_status over HTTP with pods and S3."""

from __future__ import annotations

import pytest
from k8s_support import complete, set_job_status, write_completed_result

from dreambooth_job.config import TrainConfig
from dreambooth_job.k8s import ClusterSettings, JobSpec, Phase, build_job, get_status, submit
from dreambooth_job.k8s.status import describe

T0, T1 = "2026-11-25T01:00:00Z", "2026-11-25T01:30:00Z"


def job(status=None, suspend=False, output="s3://runs/dog/"):
    train = TrainConfig(instance_data="s3://photos/dog/", class_noun="dog", output=output,
                        subject_id="dog", batch_id="night-42")
    manifest = build_job(JobSpec(train=train, cluster=ClusterSettings(queue="gpu" if suspend else None)))
    manifest["metadata"]["namespace"] = "ml"
    manifest["status"] = status or {}
    return manifest


def pod(name, phase, *, exit_code=None, message=None, reason=None, disrupted=None, created=T0):
    status = {"phase": phase}
    if exit_code is not None:
        terminated = {"exitCode": exit_code, "reason": reason or "Error"}
        if message:
            terminated["message"] = message
        status["containerStatuses"] = [{"name": "train", "image": "x", "imageID": "", "ready": False,
                                        "restartCount": 0, "state": {"terminated": terminated}}]
    if disrupted:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": disrupted}]
    job_name = job()["metadata"]["name"]
    return {"metadata": {"name": name, "labels": {"job-name": job_name}, "creationTimestamp": created},
            "status": status}


def test_queued_pending_running():
    assert describe(job(suspend=True), []).phase is Phase.QUEUED
    assert describe(job(), []).phase is Phase.PENDING
    assert describe(job({"active": 1}), [pod("p1", "Pending")]).phase is Phase.PENDING
    running = describe(job({"active": 1, "ready": 1, "startTime": T0}), [pod("p1", "Running")])
    assert (running.phase, running.retries, running.failure_reason) == (Phase.RUNNING, 0, None)
    assert running.subject_id == "dog" and running.batch_id == "night-42"
    assert running.output == "s3://runs/dog/" and running.duration_seconds > 0


def test_preempted_and_retrying_then_running_again():
    preempted = pod("p1", "Failed", exit_code=143, disrupted="PreemptionByScheduler")
    retrying = describe(job({"active": 1, "startTime": T0}), [preempted, pod("p2", "Pending", created=T1)])
    assert retrying.phase is Phase.RETRYING and retrying.retries == 1
    assert retrying.failure_reason == "preempted (PreemptionByScheduler)"
    again = describe(job({"active": 1, "ready": 1}), [preempted, pod("p2", "Running", created=T1)])
    assert (again.phase, again.retries) == (Phase.RUNNING, 1)


def test_failed_by_the_pod_failure_policy_explains_why():
    status = describe(job({"failed": 1, "startTime": T0, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "lastTransitionTime": T1,
         "message": "Container train for pod ml/p1 failed with exit code 2 matching FailJob rule"}]}),
        [pod("p1", "Failed", exit_code=2, message="no usable photos in s3://photos/dog/\n")])
    assert status.phase is Phase.FAILED and status.retries == 0
    assert status.duration_seconds == 1800
    assert status.failure_reason.startswith("PodFailurePolicy: Container train")
    assert "exit 2 (invalid configuration or input; not worth retrying): " \
           "no usable photos in s3://photos/dog/" in status.failure_reason


def test_failed_after_retries_with_oom():
    pods = [pod(f"p{i}", "Failed", exit_code=137, reason="OOMKilled", created=f"2026-11-25T0{i}:00:00Z")
            for i in range(1, 5)]
    status = describe(job({"failed": 4, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]}), pods)
    assert (status.phase, status.retries) == (Phase.FAILED, 3)
    assert status.failure_reason.endswith("(exit 137 [OOMKilled])")


def test_get_status_over_http_reads_result_json_from_s3(connection, namespace, bucket):
    output = f"s3://{bucket}/runs/dog/"
    train = TrainConfig(instance_data="s3://photos/dog/", class_noun="dog", output=output,
                        subject_id="dog")
    name = submit(JobSpec(train=train), connection=connection).name
    failed_pod = pod("dog-a", "Failed", exit_code=143, disrupted="TerminationByKubelet")
    failed_pod["metadata"]["labels"]["job-name"] = name
    # As the Job controller and kubelet would: create the pod, then report its status.
    connection.core.create_namespaced_pod(namespace, {
        "metadata": failed_pod["metadata"], "spec": {"containers": [{"name": "train", "image": "x"}]}})
    connection.core.patch_namespaced_pod_status("dog-a", namespace, {"status": failed_pod["status"]})
    set_job_status(connection, name, {"active": 1, "startTime": T0})
    status = get_status(name, connection=connection)
    assert (status.phase, status.retries) == (Phase.RETRYING, 1)
    assert status.result is None

    complete(connection, name)
    assert get_status(name, connection=connection).result is None  # no completion marker yet
    write_completed_result(output, "dog", dino=0.71, loss=0.0825)
    status = get_status(name, connection=connection)
    assert status.phase is Phase.SUCCEEDED and status.final_loss == pytest.approx(0.0825)
    assert status.result["metrics"]["dino"] == 0.71
    assert status.to_dict()["duration_seconds"] == 1200


def test_unreadable_result_is_reported_not_raised(connection, tmp_path):
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "result.json").mkdir()  # unreadable as a file
    train = TrainConfig(instance_data="s3://photos/dog/", class_noun="dog", output=str(tmp_path),
                        subject_id="dog")
    name = submit(JobSpec(train=train), connection=connection).name
    complete(connection, name)
    status = get_status(name, connection=connection)
    assert status.phase is Phase.SUCCEEDED and status.result is None
    assert "result.json" in status.result_error
