"""Scenario 1 of issue 26: one subject by `helm install` of helm/dreambooth-job with the real Helm
CLI on the real control plane. The Job controller makes the pod, the stand-in kubelet runs it
(`dreambooth-job train` on the tiny model), the output lands in the real S3 server, the Job gets
Complete, and `dreambooth-job status` and the run page agree. Then what README/docs promise of a
release: "One release is one run: a Job's pod template is immutable, so `helm upgrade` cannot
change it. Train again as a new release, or `helm uninstall` first (S3 outputs stay)", and "a run
whose output already holds a completed run of the same options exits at once".

The tests share one release (module fixture) and run in file order: install, upgrade, uninstall."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import make_photo
from kubernetes import client
from workloads import (
    IMAGE,
    QUICK_OPTIONS,
    S3_SECRET,
    SMALL_POD_RESOURCES,
    create_s3_secret,
    job_condition,
    upload_subject,
    wait_until,
)

from dreambooth_job.k8s.manifest import values_key
from dreambooth_job.k8s.status import JOB_NAME_LABEL
from dreambooth_job.storage import places, s3_client

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "dreambooth-job"
RELEASE = "dog-42"  # also the Job's name and the subject id
RUN_TIMEOUT = 300.0


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    output: str
    values: Path
    install_notes: str


def chart_values(bucket: str, photos: str, model: str) -> dict:
    """A values file as docs/operator-guide.md's dog.yaml, pointed at the test's S3 server and
    image, with QUICK_OPTIONS and small resources so that the run takes seconds."""
    repository, tag = IMAGE.split(":")
    return {
        "job": {"instanceData": photos, "classNoun": "dog", "output": f"s3://{bucket}/runs/{RELEASE}/",
                "baseModel": model, "subjectId": RELEASE,
                **{values_key(k): v for k, v in QUICK_OPTIONS.items()}},
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "s3": {"credentialsSecret": S3_SECRET, "endpointUrl": os.environ["AWS_ENDPOINT_URL"],
               "region": os.environ.get("AWS_REGION") or "us-east-1"},
        "sizing": "sd-full", "resources": SMALL_POD_RESOURCES,
    }


def cli(*args: str) -> subprocess.CompletedProcess:
    """The installed `dreambooth-job` CLI, with this worktree's code and the test's KUBECONFIG."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(Path(sys.executable).parent / "dreambooth-job"), *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def read_job(cluster, release: Release) -> client.V1Job:
    return client.BatchV1Api(cluster.api).read_namespaced_job(release.name, release.namespace)


def job_pods(cluster, release: Release) -> list[client.V1Pod]:
    return client.CoreV1Api(cluster.api).list_namespaced_pod(
        release.namespace, label_selector=f"{JOB_NAME_LABEL}={release.name}").items


def complete_job(cluster, release: Release) -> client.V1Job:
    def complete() -> client.V1Job | None:
        job = read_job(cluster, release)
        assert not job_condition(job, "Failed"), f"job failed: {job.status.conditions}"
        return job if job_condition(job, "Complete") else None

    return wait_until(complete, RUN_TIMEOUT, f"job {release.namespace}/{release.name} to complete")


@pytest.fixture(scope="module")
def release(cluster, tiny_model_uri, s3_server, tmp_path_factory) -> Release:
    """The subject installed as release dog-42 and trained to completion."""
    namespace = f"helm-{uuid.uuid4().hex[:8]}"
    cluster.plane.create_namespace(namespace, pod_security="restricted")
    cluster.kubelet.serve(namespace)
    create_s3_secret(cluster.api, namespace)
    bucket = f"helm-{uuid.uuid4().hex[:12]}"
    s3_client.s3_client().create_bucket(Bucket=bucket)
    photos = tmp_path_factory.mktemp("photos")
    for seed in range(4):
        make_photo(photos / f"{seed:02d}.jpg", seed=seed)
    values = tmp_path_factory.mktemp("values") / "dog.yaml"
    values.write_text(yaml.safe_dump(chart_values(bucket, upload_subject(bucket, RELEASE, photos),
                                                  tiny_model_uri)))
    installed = cluster.helm("install", RELEASE, str(CHART), "--values", str(values), namespace=namespace)
    made = Release(RELEASE, namespace, f"s3://{bucket}/runs/{RELEASE}/", values, installed.stdout)
    complete_job(cluster, made)
    return made


def test_install_trains_the_subject_and_status_and_run_page_agree(cluster, release, monkeypatch):
    job = read_job(cluster, release)
    pods = job_pods(cluster, release)
    result = json.loads(places.read_bytes(places.join(release.output, "result.json")))
    page = places.read_bytes(places.join(release.output, "index.html")).decode()
    monkeypatch.setenv("KUBECONFIG", str(cluster.plane.admin_kubeconfig))
    shown = cli("status", release.name, "--namespace", release.namespace, "--format", "json")

    assert f"Job {release.namespace}/{release.name} trains subject \"{RELEASE}\"" in release.install_notes
    assert job.status.succeeded == 1 and not job.status.failed
    assert [p.status.phase for p in pods] == ["Succeeded"]
    assert pods[0].status.container_statuses[0].state.terminated.exit_code == 0
    assert places.exists(places.join(release.output, "_SUCCESS"))
    assert places.exists(places.join(release.output, "model", "model_index.json"))
    assert result["status"] == "succeeded" and result["subject_id"] == RELEASE and result["image"] == IMAGE
    assert result["training"]["steps_done"] == QUICK_OPTIONS["max_train_steps"]
    assert shown.returncode == 0, shown.stderr
    (status,) = json.loads(shown.stdout)["subjects"]
    assert (status["phase"], status["subject_id"], status["output"], status["retries"]) == (
        "succeeded", RELEASE, release.output, 0)
    assert status["final_loss"] == result["training"]["final_loss"] and status["weights"] == "full"
    assert "<span class='status succeeded'>succeeded</span>" in page
    assert f"<td>{status['final_loss']:.6g}</td>" in page


def test_upgrade_with_a_changed_option_is_refused_and_leaves_the_run(cluster, release):
    before = read_job(cluster, release)
    upgrade = ("upgrade", release.name, str(CHART), "--values", str(release.values))

    refused = cluster.helm(*upgrade, "--set", "job.maxTrainSteps=3", namespace=release.namespace,
                           check=False)
    # Replacing the object (PUT; Helm 4 needs client-side apply for it) meets the same
    # immutability: only a new Job changes the run.
    replaced = cluster.helm(*upgrade, "--set", "job.maxTrainSteps=3", "--server-side=false",
                            "--force-replace", namespace=release.namespace, check=False)
    after_refusal = read_job(cluster, release)
    # A value outside the pod template (the Job's own spec) is not part of the run: it applies.
    cluster.helm(*upgrade, "--set", "ttlSecondsAfterFinished=3600", namespace=release.namespace)
    after = read_job(cluster, release)
    history = json.loads(cluster.helm("history", release.name, "--output", "json",
                                      namespace=release.namespace).stdout)

    assert refused.returncode != 0 and replaced.returncode != 0
    assert "UPGRADE FAILED" in refused.stderr
    for answer in (refused.stderr, replaced.stderr):
        assert "spec.template: Invalid value" in answer and "field is immutable" in answer
    assert after_refusal.metadata.resource_version == before.metadata.resource_version
    assert after.metadata.uid == before.metadata.uid and after.spec.ttl_seconds_after_finished == 3600
    assert after.spec.template.spec.containers[0].args == before.spec.template.spec.containers[0].args
    assert [(h["revision"], h["status"]) for h in history] == [
        (1, "superseded"), (2, "failed"), (3, "failed"), (4, "deployed")]
    assert job_condition(after, "Complete")


def test_uninstall_deletes_the_job_and_pods_keeps_the_outputs_and_a_reinstall_exits_at_once(
        cluster, release, monkeypatch):
    record = places.read_bytes(places.join(release.output, "result.json"))
    old_uid = read_job(cluster, release).metadata.uid

    cluster.helm("uninstall", release.name, namespace=release.namespace)

    jobs = client.BatchV1Api(cluster.api)
    wait_until(lambda: not jobs.list_namespaced_job(release.namespace).items, 60, "the Job to be deleted")
    wait_until(lambda: not job_pods(cluster, release), 60, "the garbage collector to delete the pod")
    assert places.read_bytes(places.join(release.output, "result.json")) == record
    monkeypatch.setenv("KUBECONFIG", str(cluster.plane.admin_kubeconfig))
    gone = cli("status", release.name, "--namespace", release.namespace)
    assert gone.returncode == 1 and "not found" in gone.stderr

    # Train again under the same name: the output holds a completed run of the same options,
    # so the new Job's pod exits 0 at once and the run's record is untouched.
    cluster.helm("install", release.name, str(CHART), "--values", str(release.values),
                 namespace=release.namespace)
    again = complete_job(cluster, release)
    assert again.metadata.uid != old_uid
    assert places.read_bytes(places.join(release.output, "result.json")) == record
