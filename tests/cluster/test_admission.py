"""Scenario 6 of issue 26, admission: Pod Security `restricted` admits every Job the chart renders
(every ci/*-values.yaml, and `mode: generate`) and every Job the Python builders produce, and the
pods made from their templates, on the real apiserver; and the real server's defaulting gives
the pods the `job-name` label that `status` finds them by.

Pod Security evaluates a Job's pod template only at the namespace's warn and audit levels (a
warning, never a refusal), so each Job is created with dryRun=All in a namespace restricted at
every level and must come back without warnings, and the pod is created with dryRun=All too,
where `enforce` refuses it. A deliberately non-compliant pod shows that both checks bite.
Nothing here runs: dry runs store nothing. Server-side label selectors and TTL deletion are
test_selectors_ttl.py's."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from admission import (
    CI_VALUES,
    create_service_account,
    dry_run_job,
    dry_run_pod,
    ensure_priority_class,
    helm_template,
    pod_of,
    restrict_fully,
)
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.generation import GenerateConfig
from dreambooth_job.k8s import (
    ClusterSettings,
    GenerateJobSpec,
    JobSpec,
    build_generate_job,
    build_job,
    examples,
)
from dreambooth_job.k8s.status import JOB_NAME_LABEL

pytestmark = pytest.mark.cluster

RELEASE = "dog-42"
GENERATE_VALUES = {"mode": "generate", "generate": {
    "model": "s3://runs/dog-42/", "output": "s3://generated/dog-42/", "prompts": ["a {identifier} dog"]}}
DOG = TrainConfig(instance_data="s3://photos/dog-42/", class_noun="dog", output="s3://runs/dog-42/")


@pytest.fixture
def priority_class(cluster):
    """ensure(name): the PriorityClass exists; those made here are deleted after the test, so that
    other scenarios sharing the control plane define their own."""
    created: list[str] = []
    yield lambda name: created.append(name) if ensure_priority_class(cluster.api, name) else None
    for name in created:
        client.SchedulingV1Api(cluster.api).delete_priority_class(name)


@pytest.fixture
def restricted(cluster, namespace) -> str:
    """The test's namespace, Pod Security `restricted` at the enforce, warn and audit levels."""
    restrict_fully(cluster.api, namespace)
    return namespace


def builder_jobs() -> dict[str, dict[str, Any]]:
    """The Jobs of build_job, build_indexed_job and build_generate_job across the settings that
    change the pod: manifests/' examples, ids left to the platform (OpenShift) on CPU, and a
    queued Job with a ServiceAccount, a shared cache claim, scheduling and extra env."""
    no_ids = ClusterSettings(run_as_user=None, run_as_group=None, fs_group=None, gpus=0, sizing="sd-full")
    kitchen_sink = ClusterSettings(
        queue="gpu-batch", service_account_name="dreambooth-trainer", priority_class_name="overnight",
        model_cache_claim="dreambooth-model-cache", s3_credentials_secret="dreambooth-job-s3",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        env=({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}},),
        sizing="sd-lora", gpus=2)
    generate = GenerateConfig(model="s3://runs/dog-42/", output="s3://generated/dog-42/")
    return {
        "manifests-job": examples.plain_job(),
        "manifests-indexed-job": examples.indexed_job(),
        "platform-ids-cpu": build_job(JobSpec(train=DOG, cluster=no_ids)),
        "queued-sa-cache-env": build_job(JobSpec(train=DOG, cluster=kitchen_sink)),
        "generate": build_generate_job(GenerateJobSpec(generate=generate,
                                                       cluster=ClusterSettings(sizing="sd-lora"))),
    }


def admit(cluster, namespace: str, job: dict[str, Any], priority_class) -> tuple[dict, dict]:
    """Dry-run create `job` and its pod; assert that neither drew a warning. Returns the Job and
    the pod the apiserver would have stored."""
    job = copy.deepcopy(job)
    job["metadata"]["namespace"] = namespace
    pod_spec = job["spec"]["template"]["spec"]
    if pod_spec.get("priorityClassName"):
        priority_class(pod_spec["priorityClassName"])
    stored_job, job_warnings = dry_run_job(cluster.api, namespace, job)
    assert job_warnings == [], f"the Job drew warnings: {job_warnings}"
    stored_pod, pod_warnings = dry_run_pod(cluster.api, namespace, pod_of(job))
    assert pod_warnings == [], f"the pod drew warnings: {pod_warnings}"
    return stored_job, stored_pod


def assert_restricted_pod(pod: dict[str, Any]) -> None:
    """What `restricted` demands, as the stored pod says it (admission let it through)."""
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["spec"]["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def assert_job_name_label(job: dict[str, Any]) -> None:
    """The real Job strategy labels the pod template with the Job's name under the key `status`
    lists pods by (JOB_NAME_LABEL) as well as the batch.kubernetes.io one."""
    name, labels = job["metadata"]["name"], job["spec"]["template"]["metadata"]["labels"]
    assert labels[JOB_NAME_LABEL] == name and labels["batch.kubernetes.io/job-name"] == name
    selector = job["spec"]["selector"]["matchLabels"]
    assert selector["batch.kubernetes.io/controller-uid"] == job["metadata"]["uid"]


@pytest.mark.parametrize("values_file", [*CI_VALUES, None],
                         ids=[*(p.name for p in CI_VALUES), "mode-generate"])
def test_restricted_admits_the_charts_job_and_pod(cluster, restricted, priority_class, values_file, tmp_path):
    if values_file is None:
        values_file = tmp_path / "generate-values.yaml"
        values_file.write_text(yaml.safe_dump(GENERATE_VALUES))
    objects = helm_template(cluster.helm, RELEASE, restricted, values_file)
    for account in (o for o in objects if o["kind"] == "ServiceAccount"):
        create_service_account(cluster.api, restricted, account)
    jobs = [o for o in objects if o["kind"] == "Job"]
    assert len(jobs) == 1, [o["kind"] for o in objects]

    stored_job, stored_pod = admit(cluster, restricted, jobs[0], priority_class)

    assert_restricted_pod(stored_pod)
    assert_job_name_label(stored_job)


@pytest.mark.parametrize("name", list(builder_jobs()))
def test_restricted_admits_the_builders_jobs_and_pods(cluster, restricted, priority_class, name):
    job = builder_jobs()[name]
    account = job["spec"]["template"]["spec"].get("serviceAccountName")
    if account:
        create_service_account(cluster.api, restricted, {"metadata": {"name": account}})

    stored_job, stored_pod = admit(cluster, restricted, job, priority_class)

    assert_restricted_pod(stored_pod)
    assert_job_name_label(stored_job)
    if name == "manifests-indexed-job":  # the real validation of per-index retries and FailIndex
        assert stored_job["spec"]["completionMode"] == "Indexed"
        assert stored_job["spec"]["backoffLimitPerIndex"] == job["spec"]["backoffLimitPerIndex"]


def test_a_pod_that_breaks_restricted_is_warned_about_as_a_job_and_refused_as_a_pod(cluster, restricted):
    """The control: without the pod's securityContext the Job draws Pod Security's warning and
    its pod is refused, so the silence of the tests above means admission looked."""
    job = copy.deepcopy(examples.plain_job())
    job["metadata"]["namespace"] = restricted
    del job["spec"]["template"]["spec"]["securityContext"]

    _, job_warnings = dry_run_job(cluster.api, restricted, job)
    with pytest.raises(ApiException) as refused:
        dry_run_pod(cluster.api, restricted, pod_of(job))

    assert any("would violate PodSecurity" in w and "runAsNonRoot" in w for w in job_warnings), job_warnings
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in json.loads(refused.value.body)["message"]
