"""Kueue v0.17 with the project's manifests/kueue admits the Jobs build_job makes as the GPU quota allows,
and its webhook suspends a queued Job created unsuspended. Pods need not run: admission is the point."""

from __future__ import annotations

import pytest
from kubernetes import client
from kueue import QUEUE_LABEL, condition, is_true, request, workloads_by_job
from workloads import wait_until

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.k8s import ClusterSettings, JobSpec, build_job

pytestmark = pytest.mark.cluster

QUEUE = "gpu-batch"  # the LocalQueue of manifests/kueue/base
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
ADMISSION_TIMEOUT = 60


@pytest.fixture
def api(control_plane):
    with control_plane.api_client() as api:
        yield api


@pytest.fixture
def batch(api, namespace):
    """The BatchV1Api; the test's Jobs are deleted afterwards, and their Workloads waited out, so that
    the next test finds the ClusterQueue's quota free."""
    batch = client.BatchV1Api(api)
    yield batch
    batch.delete_collection_namespaced_job(namespace, propagation_policy="Background")
    wait_until(lambda: not workloads_by_job(api, namespace), 60, f"the Workloads of {namespace} gone")


def queued_job(subject: str, namespace: str, queue: str | None = QUEUE) -> dict:
    train = TrainConfig(instance_data=f"s3://photos/{subject}/", class_noun="dog",
                        output=f"s3://runs/{subject}/", subject_id=subject)
    return build_job(JobSpec(train=train, cluster=ClusterSettings(queue=queue, namespace=namespace)))


def suspended(batch: client.BatchV1Api, namespace: str, name: str) -> bool:
    return bool(batch.read_namespaced_job(name, namespace).spec.suspend)


def admitted_and_pending(api, namespace: str) -> tuple[str, str] | None:
    """(admitted Job, pending Job) once Kueue has admitted one Workload of the namespace's two and
    found no quota for the other."""
    workloads = workloads_by_job(api, namespace)
    admitted = [job for job, workload in workloads.items() if is_true(workload, "Admitted")]
    pending = [job for job, workload in workloads.items() if _pending_for_quota(workload)]
    return (admitted[0], pending[0]) if len(admitted) == 1 and len(pending) == 1 else None


def _pending_for_quota(workload: dict) -> bool:
    reserved = condition(workload, "QuotaReserved")
    return bool(reserved and reserved["status"] == "False" and reserved["reason"] == "Pending")


def test_one_gpu_of_quota_admits_one_job_and_the_next_when_it_is_gone(kueue, api, batch, namespace):
    kueue.apply_project_queues(namespace, gpu_quota=1)
    for subject in ("dog", "cat"):
        manifest = queued_job(subject, namespace)
        assert manifest["spec"]["suspend"] is True and manifest["metadata"]["labels"][QUEUE_LABEL] == QUEUE
        batch.create_namespaced_job(namespace, manifest)

    first, second = wait_until(lambda: admitted_and_pending(api, namespace), ADMISSION_TIMEOUT,
                               "one Workload admitted and the other pending")
    wait_until(lambda: not suspended(batch, namespace, first), ADMISSION_TIMEOUT, f"{first} unsuspended")
    # The project's ResourceFlavor tolerates tainted GPU nodes: Kueue puts that on the admitted pods.
    tolerations = batch.read_namespaced_job(first, namespace).spec.template.spec.tolerations
    assert GPU_TOLERATION in [api.sanitize_for_serialization(toleration) for toleration in tolerations]
    pending = workloads_by_job(api, namespace)[second]
    assert "nvidia.com/gpu" in condition(pending, "QuotaReserved")["message"]
    assert not is_true(pending, "Admitted")
    assert suspended(batch, namespace, second)

    batch.delete_namespaced_job(first, namespace, propagation_policy="Background")
    wait_until(lambda: is_true(workloads_by_job(api, namespace).get(second, {}), "Admitted"),
               ADMISSION_TIMEOUT, f"{second}'s Workload admitted once {first} is deleted")
    wait_until(lambda: not suspended(batch, namespace, second), ADMISSION_TIMEOUT, f"{second} unsuspended")


def test_kueue_webhook_suspends_a_queued_job_created_unsuspended(kueue, batch, namespace):
    kueue.apply_project_queues(namespace)
    manifest = queued_job("fox", namespace)
    manifest["spec"]["suspend"] = False

    created = batch.create_namespaced_job(namespace, manifest)

    # The answer to the create is the object as stored: Kueue's mutating webhook suspended it.
    assert created.spec.suspend is True
    assert created.metadata.labels[QUEUE_LABEL] == QUEUE


def test_jobs_without_the_queue_label_are_left_to_the_job_controller(kueue, batch, namespace):
    # manageJobsWithoutQueueName: false, Kueue's default and what manifests/kueue assumes.
    manifest = queued_job("owl", namespace, queue=None)
    assert QUEUE_LABEL not in manifest["metadata"]["labels"]

    created = batch.create_namespaced_job(namespace, manifest)

    assert created.spec.suspend is False


def test_a_job_naming_no_existing_local_queue_waits_suspended(kueue, api, batch, namespace):
    # How a typo in --queue shows up: Kueue makes the Workload but reserves no quota for it.
    job = batch.create_namespaced_job(namespace, queued_job("elk", namespace, queue="no-such-queue"))
    name = job.metadata.name

    def verdict() -> dict | None:
        reserved = condition(workloads_by_job(api, namespace).get(name, {}), "QuotaReserved")
        return reserved if reserved and reserved["status"] == "False" else None

    reserved = wait_until(verdict, ADMISSION_TIMEOUT, f"Kueue's verdict on {name}'s Workload")
    assert reserved["reason"] == "Inadmissible"
    assert "LocalQueue no-such-queue doesn't exist" in reserved["message"]
    assert suspended(batch, namespace, name)


def test_kueue_converts_the_project_queues_to_the_older_api_version(kueue, api, namespace):
    # Kueue's CRDs serve v1beta1 beside v1beta2 through Kueue's conversion webhook (an unreachable one
    # fails the read), as in a real install: a client of the older version still reads the project's
    # ClusterQueue.
    kueue.apply_project_queues(namespace, gpu_quota=3)

    old = request(api, "GET", "/apis/kueue.x-k8s.io/v1beta1/clusterqueues/dreambooth-gpu")

    assert old["apiVersion"] == "kueue.x-k8s.io/v1beta1"
    quotas = {resource["name"]: resource["nominalQuota"]
              for resource in old["spec"]["resourceGroups"][0]["flavors"][0]["resources"]}
    assert quotas["nvidia.com/gpu"] == "3"  # a Quantity, as the API writes them
