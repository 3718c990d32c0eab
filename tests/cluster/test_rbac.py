"""Scenario 5 of issue 26: a ServiceAccount bound only to manifests/rbac.yaml, applied as the operator
guide applies it (`kubectl -n ml apply -f manifests/rbac.yaml`), with a token from the TokenRequest
API in its kubeconfig.

What the docs promise that identity (docs/operator-guide.md "Without Helm: manifests/", docs/api.md
"Connection", the CLI of "An overnight batch from the CLI"): `submit` (and `--replace`), `status`,
`batch`, `report` and `cancel` work in its namespace, and it holds exactly the verbs the operator
guide lists. What rbac.yaml says it never grants: Secrets, pods or ConfigMaps of its own, and
anything in another namespace; the API server refuses those with 403, and the CLI ends with the
documented one line `error: ...` and exit 2 (docs/api.md: ForbiddenError).

One tiny run (the submitted subject); the batch's Jobs are pinned to a node label no node has, so
their pods stay Pending and cost nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from batch_support import cli, ok, ok_json, write_cluster_config, write_subjects_file, write_train_config
from kubernetes import client, config, utils
from kubernetes.client.exceptions import ApiException
from workloads import S3_SECRET, cluster_settings, create_s3_secret, job_condition, upload_subject, wait_until

from dreambooth_job.k8s import job_name

pytestmark = pytest.mark.cluster

RBAC = Path(__file__).resolve().parents[2] / "manifests" / "rbac.yaml"
SUBMITTER = "dreambooth-submitter"
# A node label no node has: the batch's pods stay Pending, so no run is spent on them.
NOWHERE = "dreambooth-test/never-scheduled=true"
POD_SPEC = {"restartPolicy": "Never", "containers": [{"name": "c", "image": "registry.example/x:1"}]}


@pytest.fixture
def submitter(cluster, namespace, tmp_path) -> Path:
    """A kubeconfig whose user is the ServiceAccount of manifests/rbac.yaml, applied in `namespace`
    and nothing else, by a token from the TokenRequest API."""
    utils.create_from_yaml(cluster.api, yaml_file=str(RBAC), namespace=namespace)
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=[], expiration_seconds=3600))  # no audiences: the API server's own
    token = client.CoreV1Api(cluster.api).create_namespaced_service_account_token(
        SUBMITTER, namespace, request).status.token
    return cluster.plane.kubeconfig(tmp_path / "submitter.kubeconfig", namespace, token=token)


@pytest.fixture
def other_namespace(cluster) -> str:
    """Another tenant's namespace, with a Job of theirs (suspended: it never runs)."""
    name = f"other-{uuid.uuid4().hex[:10]}"
    cluster.plane.create_namespace(name)
    client.BatchV1Api(cluster.api).create_namespaced_job(name, {
        "metadata": {"name": "theirs"},
        "spec": {"suspend": True, "template": {"spec": POD_SPEC}}})
    return name


def job_gone(api: client.ApiClient, name: str, namespace: str) -> bool:
    try:
        client.BatchV1Api(api).read_namespaced_job(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def can_i(api: client.ApiClient, verb: str, resource: str, namespace: str) -> bool:
    """`kubectl auth can-i VERB RESOURCE -n NAMESPACE` as the identity of `api` ("pods/log" names a
    subresource, "jobs.batch" a group)."""
    resource, _, subresource = resource.partition("/")
    resource, _, group = resource.partition(".")
    review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
        resource_attributes=client.V1ResourceAttributes(
            namespace=namespace, verb=verb, group=group, resource=resource, subresource=subresource)))
    return client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed


def refused(result) -> str:
    """The one error line of a command the API server refused with 403."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.stdout}{result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: not allowed on "), result.stderr
    assert " is forbidden: User \"system:serviceaccount:" in lines[0], lines[0]
    return lines[0]


def test_the_submitter_submits_follows_batches_and_cancels_as_the_docs_promise(
        cluster, namespace, submitter, bucket, tiny_model_uri, photo_dir, tmp_path):
    create_s3_secret(cluster.api, namespace)  # the admin's: the Job names it, the submitter never reads it
    upload_subject(bucket, "dog", photo_dir)
    settings = write_cluster_config(tmp_path / "cluster.yaml", cluster_settings(namespace))
    quick = write_train_config(tmp_path / "quick.yaml", tiny_model_uri)
    dog = ("submit", "--config", quick, "--instance-data", f"s3://{bucket}/photos/dog/",
           "--class-noun", "dog", "--output", f"s3://{bucket}/runs/dog/", "--subject-id", "dog",
           "--cluster-config", settings)
    name = job_name("dog")

    assert ok(cli(*dog, kubeconfig=submitter)) == [f"created job {namespace}/{name}"]
    assert ok(cli(*dog, kubeconfig=submitter))[0].startswith(f"job {namespace}/{name} already exists")
    wait_until(lambda: job_condition(client.BatchV1Api(cluster.api).read_namespaced_job(name, namespace),
                                     "Complete"), 180, f"job {name} to complete")
    row = ok(cli("status", name, kubeconfig=submitter))[1].split()
    assert row[:3] == ["dog", "succeeded", "0"] and row[5] == "full", row
    # --replace deletes the finished Job and creates it again (pinned nowhere: it never runs).
    assert ok(cli(*dog, "--replace", "--node-selector", NOWHERE, kubeconfig=submitter)) == [
        f"replaced job {namespace}/{name}"]
    assert ok_json(cli("status", name, "-o", "json", kubeconfig=submitter))["summary"] == {"pending": 1}

    rows = [{"id": subject, "instance_data": f"s3://{bucket}/photos/{subject}/", "class_noun": "dog"}
            for subject in ("rex", "fido")]
    subjects = write_subjects_file(tmp_path / "night-2.yaml", rows, bucket, tiny_model_uri)
    batch = ("batch", subjects, "--cluster-config", settings, "--node-selector", NOWHERE)
    assert ok(cli(*batch, kubeconfig=submitter))[-1] == (
        "batch night-2: 2 created, 0 already succeeded, 0 already queued or running")
    assert ok(cli(*batch, kubeconfig=submitter))[-1] == (
        "batch night-2: 0 created, 0 already succeeded, 2 already queued or running")
    status = ok_json(cli("status", "--batch", subjects, "-o", "json", kubeconfig=submitter))
    assert status["summary"] == {"pending": 2}
    by_label = ok_json(cli("status", "-l", "dreambooth-job/batch=night-2", "-o", "json",
                           kubeconfig=submitter))
    assert sorted(s["subject_id"] for s in by_label["subjects"]) == ["fido", "rex"]
    report = ok(cli("report", "--batch", subjects, "--output", f"s3://{bucket}/reports/night-2/",
                    kubeconfig=submitter))
    assert report[0] == "2 subject(s): 2 pending"

    batch_jobs = {job_name(subject, "night-2") for subject in ("rex", "fido")}
    cancelled = ok(cli("cancel", "--batch", subjects, kubeconfig=submitter))
    assert sorted(cancelled) == sorted(f"deleted job {n}" for n in batch_jobs)
    assert ok(cli("cancel", name, kubeconfig=submitter)) == [f"deleted job {name}"]
    for gone in (*batch_jobs, name):
        wait_until(lambda gone=gone: job_gone(cluster.api, gone, namespace), 60, f"job {gone} deleted")
    status = ok_json(cli("status", "--batch", subjects, "-o", "json", kubeconfig=submitter))
    assert status["summary"] == {"not-submitted": 2}


def test_the_submitter_holds_exactly_what_the_operator_guide_says_rbac_yaml_grants(
        cluster, namespace, submitter, other_namespace):
    # docs/operator-guide.md: "create/get/list/watch/delete on Jobs and get/list on pods and their
    # logs, nothing more"; what `kubectl logs job/...` and `kubectl wait` need besides the CLI.
    api = config.new_client_from_config(config_file=str(submitter))
    granted = [(verb, "jobs.batch") for verb in ("create", "get", "list", "watch", "delete")] + [
        ("get", "pods"), ("list", "pods"), ("get", "pods/log")]
    assert [(verb, what) for verb, what in granted if not can_i(api, verb, what, namespace)] == []
    withheld = [("update", "jobs.batch"), ("patch", "jobs.batch"), ("update", "jobs.batch/status"),
                ("create", "pods"), ("delete", "pods"), ("create", "pods/eviction"), ("get", "secrets"),
                ("list", "secrets"), ("create", "configmaps"), ("create", "serviceaccounts/token"),
                ("create", "rolebindings.rbac.authorization.k8s.io")]
    assert [(verb, what) for verb, what in withheld if can_i(api, verb, what, namespace)] == []
    assert [(verb, what) for verb, what in granted if can_i(api, verb, what, other_namespace)] == []


def test_the_submitter_reads_no_secret_and_touches_no_other_namespace(
        cluster, namespace, submitter, other_namespace, bucket, tmp_path):
    create_s3_secret(cluster.api, namespace)
    api = config.new_client_from_config(config_file=str(submitter))
    core, jobs = client.CoreV1Api(api), client.BatchV1Api(api)
    own_refusals = {
        "get secret": lambda: core.read_namespaced_secret(S3_SECRET, namespace),
        "list secrets": lambda: core.list_namespaced_secret(namespace),
        "create pod": lambda: core.create_namespaced_pod(namespace, {"metadata": {"name": "p"},
                                                                     "spec": POD_SPEC}),
        "create configmap": lambda: core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}}),
        "list jobs elsewhere": lambda: jobs.list_namespaced_job(other_namespace),
        "get a job elsewhere": lambda: jobs.read_namespaced_job("theirs", other_namespace),
        "create a job elsewhere": lambda: jobs.create_namespaced_job(other_namespace, {
            "metadata": {"name": "mine"}, "spec": {"template": {"spec": POD_SPEC}}}),
        "list pods elsewhere": lambda: core.list_namespaced_pod(other_namespace),
    }
    for what, call in own_refusals.items():
        with pytest.raises(ApiException) as refusal:
            call()
        assert refusal.value.status == 403, f"{what}: {refusal.value.status} {refusal.value.reason}"

    settings = write_cluster_config(tmp_path / "cluster.yaml", cluster_settings(namespace))
    submit_elsewhere = cli("submit", "--instance-data", f"s3://{bucket}/photos/dog/", "--class-noun", "dog",
                           "--output", f"s3://{bucket}/runs/dog/", "--subject-id", "dog",
                           "--cluster-config", settings, "--namespace", other_namespace, kubeconfig=submitter)
    line = refused(submit_elsewhere)
    assert line.startswith(f"error: not allowed on job {other_namespace}/{job_name('dog')}: "), line
    assert f'cannot create resource "jobs" in API group "batch" in the namespace "{other_namespace}"' in line
    refused(cli("status", "theirs", "-n", other_namespace, kubeconfig=submitter))
    refused(cli("cancel", "theirs", "-n", other_namespace, kubeconfig=submitter))
    rows = [{"id": "rex", "instance_data": f"s3://{bucket}/photos/rex/", "class_noun": "dog"}]
    subjects = write_subjects_file(tmp_path / "night-1.yaml", rows, bucket, "s3://models/tiny/")
    refused(cli("batch", subjects, "--cluster-config", settings, "--namespace", other_namespace,
                kubeconfig=submitter))

    # The other tenant's namespace is as it was: their Job, and nothing of ours.
    theirs = client.BatchV1Api(cluster.api).list_namespaced_job(other_namespace).items
    assert [job.metadata.name for job in theirs] == ["theirs"]
