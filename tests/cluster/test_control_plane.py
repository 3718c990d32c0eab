"""The control plane fixture itself, against the real servers: kwok's GPU nodes, the scheduler binding
a Job's pod that nothing then runs (the stand-in kubelet's job), Pod Security, RBAC and the
service-account controllers."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from workloads import wait_until

pytestmark = pytest.mark.cluster

# Restricted Pod Security's requirements, as build_job and the chart set them.
RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture
def core(control_plane):
    with control_plane.api_client() as api:
        yield client.CoreV1Api(api)


def _pod_spec(security: dict, gpus: int = 0) -> dict:
    container = {"name": "main", "image": "busybox", "command": ["true"], "securityContext": security}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {"restartPolicy": "Never", "containers": [container]}


def _pod(name: str, security: dict) -> dict:
    return {"metadata": {"name": name}, "spec": _pod_spec(security)}


def _message(error: ApiException) -> str:
    return json.loads(error.body)["message"]


def test_kwok_nodes_are_ready_and_advertise_gpus(control_plane, core):
    nodes = core.list_node(label_selector="type=kwok").items

    assert sorted(node.metadata.name for node in nodes) == sorted(control_plane.node_names)
    for node in nodes:
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert [c.status for c in ready] == ["True"], node.metadata.name
        assert node.status.allocatable["nvidia.com/gpu"] == str(control_plane.gpus_per_node)
        assert node.status.capacity["nvidia.com/gpu"] == str(control_plane.gpus_per_node)
        assert not node.spec.taints  # nothing keeps pods off them


def test_job_pod_is_bound_to_a_kwok_node_and_kwok_leaves_it_alone(control_plane, core, namespace):
    job = {
        "metadata": {"name": "bind-me"},
        "spec": {"backoffLimit": 0, "template": {"spec": _pod_spec(RESTRICTED_CONTAINER_SECURITY, gpus=2)}},
    }
    with control_plane.api_client() as api:
        client.BatchV1Api(api).create_namespaced_job(namespace, job)

    def bound_pod():
        pods = core.list_namespaced_pod(namespace, label_selector="job-name=bind-me").items
        return next((pod for pod in pods if pod.spec.node_name), None)

    pod = wait_until(bound_pod, 60, "the Job controller's pod to be bound by the scheduler")
    assert pod.spec.node_name in control_plane.node_names
    assert pod.status.phase == "Pending"
    assert not pod.status.container_statuses

    # kwok's pod stages, had they been loaded, act within milliseconds of the binding; watching the
    # pod for a bounded 3 s from the version we read shows that no one writes its status (a real
    # kubelet is the stand-in's job, which these tests do not start).
    changes = []
    for event in watch.Watch().stream(
        core.list_namespaced_pod, namespace, field_selector=f"metadata.name={pod.metadata.name}",
        resource_version=pod.metadata.resource_version, timeout_seconds=3,
    ):
        status = event["object"].status
        changes.append((event["type"], status.phase, status.container_statuses))
    after = core.read_namespaced_pod(pod.metadata.name, namespace)

    assert all(phase == "Pending" and not statuses for _, phase, statuses in changes), changes
    assert after.status.phase == "Pending"
    assert not after.status.container_statuses
    assert after.spec.node_name == pod.spec.node_name


def test_finished_job_is_deleted_by_ttl_and_its_pod_by_the_garbage_collector(control_plane, core, namespace):
    job = {
        "metadata": {"name": "short-lived"},
        "spec": {
            "backoffLimit": 0, "ttlSecondsAfterFinished": 0,
            "template": {"spec": _pod_spec(RESTRICTED_CONTAINER_SECURITY, gpus=1)},
        },
    }
    with control_plane.api_client() as api:
        jobs = client.BatchV1Api(api)
        jobs.create_namespaced_job(namespace, job)

        def bound_pod():
            pods = core.list_namespaced_pod(namespace, label_selector="job-name=short-lived").items
            return next((pod for pod in pods if pod.spec.node_name), None)

        pod = wait_until(bound_pod, 60, "the Job's pod to be bound")
        # What a kubelet writes when the container exits 0 (here by hand: no stand-in kubelet runs).
        now = pod.metadata.creation_timestamp.isoformat()
        core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {
            "phase": "Succeeded",
            "containerStatuses": [{
                "name": "main", "image": "busybox", "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now,
                                         "finishedAt": now}},
            }],
        }})

        def gone(read) -> bool:
            try:
                read()
            except ApiException as error:
                if error.status == 404:
                    return True
                raise
            return False

        # The Job controller completes the Job, the TTL controller deletes it, the garbage collector
        # its pod (a terminal pod is deleted at once, with no kubelet to confirm).
        job_deleted = wait_until(lambda: gone(lambda: jobs.read_namespaced_job("short-lived", namespace)),
                                 60, "the TTL-after-finished controller to delete the finished Job")
        pod_deleted = wait_until(lambda: gone(lambda: core.read_namespaced_pod(pod.metadata.name, namespace)),
                                 60, "the garbage collector to delete the Job's pod")
    assert job_deleted is True and pod_deleted is True


def test_privileged_pod_is_refused_by_pod_security(core, namespace):
    privileged = {**RESTRICTED_CONTAINER_SECURITY, "privileged": True, "allowPrivilegeEscalation": True}

    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, _pod("privileged", privileged))

    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest": privileged' in _message(refused.value)
    # The same pod without the privileges is admitted: the refusal was about them.
    core.create_namespaced_pod(namespace, _pod("unprivileged", RESTRICTED_CONTAINER_SECURITY))


def test_new_namespace_gets_default_service_account_and_root_ca(core):
    name = f"c-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})

    def exists(read):
        try:
            return read()
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    account = wait_until(
        lambda: exists(lambda: core.read_namespaced_service_account("default", name)), 60,
        "the serviceaccount controller to create the default ServiceAccount",
    )
    root_ca = wait_until(
        lambda: exists(lambda: core.read_namespaced_config_map("kube-root-ca.crt", name)), 60,
        "the root-ca publisher to create kube-root-ca.crt",
    )
    assert account.metadata.namespace == name
    assert "BEGIN CERTIFICATE" in root_ca.data["ca.crt"]


def test_service_account_token_authenticates_and_rbac_refuses_it(control_plane, core, namespace, tmp_path):
    from kubernetes import config

    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    token = core.create_namespaced_service_account_token("default", namespace, request).status.token
    path = control_plane.kubeconfig(tmp_path / "sa.kubeconfig", namespace, token=token)

    with config.new_client_from_config(config_file=str(path)) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review({})
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(api).list_namespaced_secret(namespace)

    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:default"
    assert refused.value.status == 403
    assert f'"system:serviceaccount:{namespace}:default" cannot list resource "secrets"' in _message(
        refused.value
    )
