"""Job status: the phase rules on API-shaped dicts, then get_status over HTTP with pods and S3."""

from __future__ import annotations

import logging

import pytest
from k8s_support import complete, create_job_pod, set_job_status, write_completed_result

from dreambooth_job import log
from dreambooth_job.config.train_config import TrainConfig
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


def pod(name, phase, *, exit_code=None, message=None, reason=None, disrupted=None, created=T0,
        evicted=None):
    """A pod as a kubelet reports it. `message` is the container's termination message: with
    terminationMessagePolicy FallbackToLogsOnError, the job's termination log (one line and a
    newline, termination.py) or, when it wrote none and exited non-zero, the log's tail."""
    status = {"phase": phase}
    if exit_code is not None:
        container_id = f"containerd://{name}-0123456789abcdef"
        terminated = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                      "startedAt": T0, "finishedAt": T1, "containerID": container_id}
        if message:
            terminated["message"] = message
        status["containerStatuses"] = [{
            "name": "train", "image": "registry.example.com/dreambooth-job:0.1.0",
            "imageID": "registry.example.com/dreambooth-job@sha256:" + "0" * 64,
            "containerID": container_id, "ready": False, "restartCount": 0, "started": False,
            "lastState": {}, "state": {"terminated": terminated}}]
    if disrupted:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": disrupted}]
    if evicted:  # what the kubelet's eviction manager sets
        status.update(reason="Evicted", message=evicted)
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                 "reason": "TerminationByKubelet", "message": evicted}]
    job_name = job()["metadata"]["name"]
    return {"metadata": {"name": name, "labels": {"job-name": job_name}, "creationTimestamp": created},
            "status": status}


def log_tail(*messages: str) -> str:
    """The kubelet's fallback message: the last 80 lines of the log, at most 2048 bytes (so the
    first line may be cut), here of the job's JSON log lines."""
    formatter = log._JsonFormatter({"job_id": "dog-1234abcd", "subject_id": "dog"})
    lines = [formatter.format(logging.LogRecord("dreambooth_job", logging.INFO, __file__, 0, m, None, None))
             for m in messages]
    return ("\n".join(lines[-80:]) + "\n")[-2048:]


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


def test_an_evicted_pod_is_retrying_while_it_checkpoints_and_until_its_replacement_runs():
    # As a real cluster shows it (tests/cluster/test_preemption.py): the Eviction API adds the
    # condition and deletes the pod, which runs on through its SIGTERM checkpoint; once it has
    # ended it is deleted, and the podFailurePolicy's Ignore keeps it off status.failed.
    evicted = pod("p1", "Running", disrupted="EvictionByEvictionAPI")
    evicted["metadata"]["deletionTimestamp"] = T1
    # Before the Job controller's next sync its status still counts the pod ready.
    for status in ({"active": 1, "ready": 1, "startTime": T0}, {"terminating": 1, "startTime": T0}):
        checkpointing = describe(job(status), [evicted])
        assert checkpointing.phase is Phase.RETRYING
        assert checkpointing.failure_reason == "preempted (EvictionByEvictionAPI)"
    waiting = describe(job({"startTime": T0}), [])
    assert (waiting.phase, waiting.retries, waiting.failure_reason) == (Phase.RETRYING, 0, None)
    # Not to be confused with a pod that succeeded a moment before the Job's Complete condition.
    assert describe(job({"startTime": T0, "succeeded": 1}), [pod("p2", "Succeeded", exit_code=0)]).phase \
        is not Phase.RETRYING


def test_failed_by_the_pod_failure_policy_explains_why():
    status = describe(job({"failed": 1, "startTime": T0, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "lastTransitionTime": T1,
         "message": "Container train for pod ml/p1 failed with exit code 2 matching FailJob rule"}]}),
        [pod("p1", "Failed", exit_code=2, message="no usable photos in s3://photos/dog/\n")])
    assert status.phase is Phase.FAILED and status.retries == 0
    assert status.duration_seconds == 1800
    assert status.failure_reason == "PodFailurePolicy: exit 2 (invalid configuration or input; not " \
        "worth retrying): no usable photos in s3://photos/dog/"


def test_failed_after_retries_with_oom_shows_the_last_log_line():
    tail = log_tail(*[f"step {i}/800 loss 0.1{i}" for i in range(1, 60)])
    pods = [pod(f"p{i}", "Failed", exit_code=137, reason="OOMKilled", message=tail,
                created=f"2026-11-25T0{i}:00:00Z") for i in range(1, 5)]
    status = describe(job({"failed": 4, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]}), pods)
    assert (status.phase, status.retries) == (Phase.FAILED, 3)
    assert status.failure_reason == ("BackoffLimitExceeded: exit 137 (killed by SIGKILL) [OOMKilled]: "
                                     "last log line: step 59/800 loss 0.159")


def test_the_jobs_own_termination_message_is_the_reason():
    failed = pod("p1", "Failed", exit_code=75,
                 message="no space left on device writing /tmp/dreambooth-job-x1/checkpoint\n")
    status = describe(job({"active": 1, "failed": 1, "startTime": T0}), [failed])
    assert status.phase is Phase.RETRYING
    assert status.failure_reason == (
        "exit 75 (transient failure (object store, network) after retries; worth a retry): "
        "no space left on device writing /tmp/dreambooth-job-x1/checkpoint")


def test_a_crash_before_the_job_wrote_its_message_shows_the_tracebacks_last_line():
    traceback = "Traceback (most recent call last):\n  File \"x.py\", line 1\nMemoryError: out of memory\n"
    status = describe(job({"failed": 1, "active": 1}),
                      [pod("p1", "Failed", exit_code=1, message=traceback)])
    assert status.failure_reason.endswith(": MemoryError: out of memory")


def test_evicted_for_local_disk_says_so():
    evicted = pod("p1", "Failed", exit_code=137, message=log_tail("step 7/800 loss 0.2"),
                  evicted="Pod ephemeral local storage usage exceeds the total limit of containers 48Gi. ")
    status = describe(job({"active": 1, "failed": 1}), [evicted, pod("p2", "Pending", created=T1)])
    assert status.phase is Phase.RETRYING
    assert status.failure_reason == (
        "evicted: Pod ephemeral local storage usage exceeds the total limit of containers 48Gi.")


def test_get_status_over_http_reads_result_json_from_s3(connection, namespace, bucket):
    output = f"s3://{bucket}/runs/dog/"
    train = TrainConfig(instance_data="s3://photos/dog/", class_noun="dog", output=output,
                        subject_id="dog")
    name = submit(JobSpec(train=train), connection=connection).name
    failed_pod = pod("dog-a", "Failed", exit_code=143, disrupted="TerminationByKubelet")
    # As the Job controller and kubelet would: create the pod from the Job's template, then report
    # its status (the server keeps the kubelet's status only through the status subresource).
    stored = create_job_pod(connection, name, "dog-a", failed_pod["status"])
    assert stored["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
    set_job_status(connection, name, {"active": 1, "startTime": T0})
    status = get_status(name, connection=connection)
    assert (status.phase, status.retries) == (Phase.RETRYING, 1)
    assert status.result is None

    complete(connection, name)
    assert get_status(name, connection=connection).result is None  # no completion marker yet
    write_completed_result(output, "dog", dino=0.71, loss=0.0825)
    status = get_status(name, connection=connection)
    assert status.phase is Phase.SUCCEEDED and status.final_loss == pytest.approx(0.0825)
    assert status.result.metrics["dino"] == 0.71
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


# --- result.json shapes: schema 2 (full or LoRA) and schema 1 files written before LoRA ----------

def _loaded(output):
    from dreambooth_job.k8s import JobStatus
    from dreambooth_job.k8s.status import load_result

    status = JobStatus(name="db-dog", namespace="ml", phase=Phase.SUCCEEDED, output=str(output))
    load_result(status)
    return status


def test_a_lora_run_reads_as_its_adapter_files_without_a_model(tmp_path):
    write_completed_result(tmp_path, "dog", lora=True)
    row = _loaded(tmp_path).to_dict()
    assert row["weights"] == "lora"
    assert row["outputs"] == {"model": None, "single_file": None,
                              "lora": [f"{tmp_path}/lora/pytorch_lora_weights.safetensors",
                                       f"{tmp_path}/lora/dog.safetensors"]}


def test_a_schema_1_result_still_reads_as_a_full_model(tmp_path):
    import json

    import jsonschema

    from dreambooth_job.outputs import result as result_module

    write_completed_result(tmp_path, "dog")
    record = json.loads((tmp_path / "result.json").read_text())
    record["schema_version"] = 1  # what the release before LoRA wrote: no files, always a model
    del record["outputs"]["files"]
    jsonschema.validate(record, result_module.schema_v1())
    (tmp_path / "result.json").write_text(json.dumps(record))
    status = _loaded(tmp_path)
    assert status.weights == "full" and status.outputs["model"] == f"{tmp_path}/model"
    assert status.outputs["lora"] == []


def test_an_absent_outputs_block_reads_as_nothing_published(tmp_path):
    import json

    write_completed_result(tmp_path, "dog")
    record = json.loads((tmp_path / "result.json").read_text())
    record["outputs"] = None
    (tmp_path / "result.json").write_text(json.dumps(record))
    status = _loaded(tmp_path)
    assert status.weights is None and status.outputs == {"model": None, "single_file": None, "lora": []}


@pytest.mark.parametrize(("outputs", "named"), [("model", "outputs is the string 'model', not a mapping"),
                                                ({"model": 3}, "outputs.model is an integer"),
                                                ({"lora": "x"}, "outputs.lora is the string 'x'"),
                                                ({"lora": [1, None]}, "outputs.lora is a list")])
def test_a_forged_outputs_block_reads_as_unreadable_naming_the_field(tmp_path, outputs, named):
    import json

    write_completed_result(tmp_path, "dog")
    record = json.loads((tmp_path / "result.json").read_text())
    record["outputs"] = outputs
    (tmp_path / "result.json").write_text(json.dumps(record))
    status = _loaded(tmp_path)
    assert status.result is None and status.weights is None and status.outputs is None
    assert status.result_error.startswith(f"result.json unreadable: {named}")
