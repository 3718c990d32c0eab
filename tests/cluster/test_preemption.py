"""Preemption on a real control plane: a pod evicted through the Eviction API checkpoints on SIGTERM
and exits 143; the Job's podFailurePolicy ignores it (the DisruptionTarget condition the apiserver
added), so the Job controller starts a replacement, once the evicted pod has ended, that resumes
from the checkpoint and finishes, and the Job's failure count stays 0."""

from __future__ import annotations

import json
import re

import pytest
from job_pods import (
    CHECKPOINT_WRITTEN,
    RESUMED,
    PodRecorder,
    container_log,
    evict,
    finished_job,
    pod_condition,
    subject_config,
    terminated,
    timestamp,
    wait_for_log,
)
from workloads import cluster_settings, create_s3_secret, upload_subject

from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.k8s import client as k8s
from dreambooth_job.k8s.manifest import JobSpec
from dreambooth_job.k8s.status import Phase, get_status
from dreambooth_job.storage import places as storage

pytestmark = pytest.mark.cluster

# Long enough to be evicted mid-training (a tiny step takes ~0.1 s on one CPU thread), with a
# checkpoint early on to evict after.
STEPS = 60
CHECKPOINT_EVERY = 10


def test_an_evicted_pod_checkpoints_and_its_replacement_resumes_without_counting_a_failure(
        cluster, namespace, kubeconfig, bucket, photo_dir, tiny_model_uri):
    create_s3_secret(cluster.api, namespace)
    photos = upload_subject(bucket, "rex", photo_dir)
    train = subject_config(bucket, "rex", photos, tiny_model_uri,
                           max_train_steps=STEPS, checkpoint_every=CHECKPOINT_EVERY)
    connection = k8s.Connection.from_environment(kubeconfig=str(kubeconfig))
    job = k8s.submit(JobSpec(train=train, cluster=cluster_settings(namespace)), connection=connection)

    with PodRecorder(cluster.api, namespace, job.name) as pods:
        [first] = pods.wait_for_pods(1, timeout=60)
        wait_for_log(cluster.kubelet, first, CHECKPOINT_WRITTEN, timeout=240)
        assert evict(cluster.api, pods.current(first)) == 201
        # The eviction marked the pod at once; it checkpoints for a while longer (at least an upload).
        checkpointing = get_status(job.name, namespace, read_result=False, connection=connection)
        assert checkpointing.phase is Phase.RETRYING, checkpointing
        assert checkpointing.failure_reason == "preempted (EvictionByEvictionAPI)"

        evicted = pods.wait_until_terminated(first, timeout=120)
        # Ended (then deleted): the replacement comes after the Job controller's backoff.
        between = get_status(job.name, namespace, read_result=False, connection=connection)
        assert between.phase is Phase.RETRYING, between
        disruption = pod_condition(evicted, "DisruptionTarget")
        assert disruption and disruption["reason"] == "EvictionByEvictionAPI", evicted["status"]
        assert terminated(evicted)["exitCode"] == ExitCode.TERMINATED, terminated(evicted)
        assert evicted["status"]["phase"] == "Failed"
        first_log = container_log(cluster.kubelet, evicted)
        assert "SIGTERM received" in first_log
        saved = [int(step) for _, step in re.findall(CHECKPOINT_WRITTEN, first_log)]
        assert saved and saved[-1] < STEPS, "evicted before training ended"

        finished = finished_job(connection, job.name, namespace, "Complete", timeout=300)
        first_pod, replacement = pods.pods()
        assert first_pod["metadata"]["uid"] == first["metadata"]["uid"]
        replacement = pods.wait_until_terminated(replacement, timeout=30)

    # podReplacementPolicy Failed: the replacement was created only once the evicted pod had ended.
    assert timestamp(replacement["metadata"]["creationTimestamp"]) >= \
        timestamp(terminated(evicted)["finishedAt"])
    assert terminated(replacement)["exitCode"] == ExitCode.OK
    resumed = re.search(RESUMED, container_log(cluster.kubelet, replacement))
    assert resumed, container_log(cluster.kubelet, replacement)[-3000:]
    # It resumed from the checkpoint the evicted pod wrote on SIGTERM, its last one.
    assert int(resumed.group(2)) == saved[-1] and resumed.group(1).endswith(f"step-{saved[-1]:06d}")
    result = json.loads(storage.read_bytes(storage.join(train.output, "result.json")))
    assert result["status"] == "succeeded"
    assert result["training"]["resumed_from_step"] == saved[-1]
    assert storage.exists(storage.join(train.output, "_SUCCESS"))

    # The eviction is not a failure: the Ignore rule of the podFailurePolicy kept it off the count.
    assert not finished.status.failed, finished.status
    assert finished.status.succeeded == 1
    status = get_status(job.name, namespace, connection=connection)
    assert status.phase is Phase.SUCCEEDED and status.result is not None
