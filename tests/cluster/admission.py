"""Server-side dry runs for the admission scenario: what Pod Security answers for a Job (warnings:
it evaluates a Job's pod template only at the namespace's warn and audit levels) and for the pod
itself (enforcement), and the Jobs the chart and the Python builders produce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "dreambooth-job"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
POD_SECURITY_LEVELS = ("enforce", "warn", "audit")
# What a dry run answers: the object the server would have stored, and its warnings.
DryRun = tuple[dict[str, Any], list[str]]


def restrict_fully(api: client.ApiClient, namespace: str) -> None:
    """Pod Security `restricted` at every level: with `enforce` alone a Job is not evaluated at
    all (admission short-circuits controllers when warn and audit are privileged)."""
    labels = {f"pod-security.kubernetes.io/{level}": "restricted" for level in POD_SECURITY_LEVELS}
    labels |= {f"pod-security.kubernetes.io/{level}-version": "latest" for level in POD_SECURITY_LEVELS}
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"labels": labels}})


def helm_template(helm: Any, release: str, namespace: str, values: Path) -> list[dict[str, Any]]:
    """The chart's objects for `values`, rendered by the Helm CLI (`helm template`)."""
    out = helm("template", release, str(CHART), "--values", str(values), namespace=namespace)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def dry_run(create: Any, namespace: str, body: dict[str, Any]) -> DryRun:
    """`create(namespace, body)` with dryRun=All: the apiserver defaults, validates and admits the
    object and stores nothing. Returns the object it would have stored (API dict) and every
    `Warning` header (read from the raw answer: the client's ApiResponse keeps only one of
    several); Pod Security's start with 'would violate PodSecurity'."""
    response = create(namespace, body, dry_run="All", _preload_content=False)
    return json.loads(response.data), list(response.headers.getlist("Warning"))


def dry_run_job(api: client.ApiClient, namespace: str, job: dict[str, Any]) -> DryRun:
    """The Job: Pod Security checks its pod template at the warn and audit levels only."""
    return dry_run(client.BatchV1Api(api).create_namespaced_job, namespace, job)


def dry_run_pod(api: client.ApiClient, namespace: str, pod: dict[str, Any]) -> DryRun:
    """The pod: Pod Security's `enforce` level refuses it (403) when it breaks the level."""
    return dry_run(client.CoreV1Api(api).create_namespaced_pod, namespace, pod)


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    """The pod the Job controller would create from `job`'s template (as far as admission sees)."""
    template = job["spec"]["template"]
    metadata = {"name": f"{job['metadata']['name']}-admission"[:63].rstrip("-"),
                "labels": template["metadata"].get("labels") or {}}
    if template["metadata"].get("annotations"):
        metadata["annotations"] = template["metadata"]["annotations"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def ensure_priority_class(api: client.ApiClient, name: str) -> bool:
    """The Priority admission plugin refuses a pod naming a PriorityClass that does not exist:
    create it unless it does. True when this call created it (its caller deletes it after)."""
    body = {"metadata": {"name": name}, "value": 1000, "globalDefault": False,
            "description": "created by the cluster tests' admission checks"}
    try:
        client.SchedulingV1Api(api).create_priority_class(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        return False
    return True


def create_service_account(api: client.ApiClient, namespace: str, account: dict[str, Any]) -> None:
    """Create a rendered ServiceAccount for real: a pod naming a missing one is refused by the
    ServiceAccount admission plugin, dry run or not."""
    body = {**account, "metadata": {**account["metadata"], "namespace": namespace}}
    client.CoreV1Api(api).create_namespaced_service_account(namespace, body)
