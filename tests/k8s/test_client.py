"""submit / cancel / errors against a real kube-apiserver, through the official client (injected
429/503 answers and their retries: test_injected_errors.py)."""

from __future__ import annotations

import socket

import pytest
import yaml
from control_plane import SERVICE_ACCOUNT_ISSUER
from k8s_support import complete, create_job_pod, start
from kubernetes import client
from workloads import wait_until

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.k8s import (
    BATCH_LABEL,
    ApiUnreachableError,
    ClusterConfigError,
    ClusterSettings,
    Connection,
    ForbiddenError,
    InvalidSpecError,
    JobExistsError,
    JobNotFoundError,
    JobSpec,
    JobStillRunningError,
    build_job,
    cancel,
    get_status,
    job_name,
    submit,
)
from dreambooth_job.k8s import client as k8s_client


def spec_for(subject="dog", output="s3://runs/dog/", batch_id=None, **cluster) -> JobSpec:
    train = TrainConfig(instance_data=f"s3://photos/{subject}/", class_noun="dog", output=output,
                        subject_id=subject, batch_id=batch_id)
    return JobSpec(train=train, cluster=ClusterSettings(image="registry/dreambooth-job:1", **cluster))


def assert_kept(expected, stored, where="job"):
    """Every field of `expected` is in `stored` unchanged (the server adds its defaults beside them)."""
    if isinstance(expected, dict):
        assert isinstance(stored, dict), where
        for key, value in expected.items():
            assert key in stored, f"{where}.{key} dropped by the server"
            assert_kept(value, stored[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(stored, list) and len(stored) == len(expected), where
        for index, (want, have) in enumerate(zip(expected, stored)):
            assert_kept(want, have, f"{where}[{index}]")
    else:
        assert stored == expected, f"{where}: sent {expected!r}, stored {stored!r}"


def test_submit_creates_the_builders_job_in_the_contexts_namespace(connection, namespace):
    job = submit(spec_for(), connection=connection)
    assert job.created and job.namespace == namespace and job.name == job_name("dog")
    stored = connection.api_client.sanitize_for_serialization(
        connection.batch.read_namespaced_job(job.name, namespace))
    expected = build_job(spec_for())
    expected["metadata"]["namespace"] = namespace
    assert_kept(expected, stored)  # the server validated the Job and kept all of it
    # What the server adds: the uid the client reports, and the selector of the Job's pods.
    assert job.uid and stored["metadata"]["uid"] == job.uid
    assert stored["spec"]["selector"]["matchLabels"] == {"batch.kubernetes.io/controller-uid": job.uid}
    assert stored["spec"]["template"]["metadata"]["labels"]["job-name"] == job.name


def test_submitting_twice_reports_the_existing_job(connection, namespace):
    first = submit(spec_for(), connection=connection)
    second = submit(spec_for(), connection=connection)
    assert first.created and not second.created and second.name == first.name
    assert second.uid == first.uid  # the existing Job is reported, not a new one
    assert len(connection.batch.list_namespaced_job(namespace).items) == 1


def test_replace_recreates_only_a_finished_job(connection, namespace):
    first = submit(spec_for(), connection=connection)
    with pytest.raises(JobStillRunningError, match="cancel it"):
        submit(spec_for(), replace=True, connection=connection)
    complete(connection, first.name)
    again = submit(spec_for(), replace=True, connection=connection)
    assert again.created and again.replaced and again.uid != first.uid
    fresh = connection.batch.read_namespaced_job(first.name, namespace)
    assert fresh.metadata.uid == again.uid
    assert not fresh.status.conditions and not fresh.status.succeeded  # a fresh Job


def test_a_foreign_job_holding_the_name_is_never_adopted(connection, namespace):
    manifest = build_job(spec_for())
    manifest["metadata"]["labels"]["dreambooth-job/subject"] = "someone-else"
    connection.batch.create_namespaced_job(namespace, manifest)
    with pytest.raises(JobExistsError, match="someone-else"):
        submit(spec_for(), connection=connection)


def test_label_selectors_filter_on_the_server(connection, namespace):
    dog = submit(spec_for("dog", batch_id="night-1"), connection=connection).name
    cat = submit(spec_for("cat", "s3://runs/cat/", batch_id="night-2"), connection=connection).name
    listed = connection.batch.list_namespaced_job(namespace, label_selector=f"{BATCH_LABEL}=night-1")
    assert [job.metadata.name for job in listed.items] == [dog]
    assert list(k8s_client.jobs_by_name({BATCH_LABEL: "night-1"}, connection=connection)) == [dog]
    # A Job's pods are found by its job-name label: the cat's failed pod is not the dog's retry.
    create_job_pod(connection, cat, "cat-a", {"phase": "Failed", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]})
    assert get_status(dog, connection=connection).retries == 0
    assert get_status(cat, connection=connection).retries == 1


HOLD = "dreambooth-job.test/hold"  # a finalizer that keeps the pod until the test lets it go


def test_cancel_deletes_in_the_foreground(connection, namespace, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "result.json").write_text("{}")
    name = submit(spec_for(output=str(output)), connection=connection).name
    create_job_pod(connection, name, "dog-pod")
    connection.core.patch_namespaced_pod("dog-pod", namespace, {"metadata": {"finalizers": [HOLD]}})
    cancel(name, connection=connection)

    # Foreground: the garbage collector deletes the Job's pod first and keeps the Job meanwhile.
    def pod_deleting():
        pod = connection.core.read_namespaced_pod("dog-pod", namespace)
        return pod if pod.metadata.deletion_timestamp else None

    pod = wait_until(pod_deleting, 30, "the garbage collector to delete the pod")
    job = connection.batch.read_namespaced_job(name, namespace)
    assert job.metadata.deletion_timestamp and "foregroundDeletion" in job.metadata.finalizers
    connection.core.patch_namespaced_pod("dog-pod", namespace, {"metadata": {"finalizers": None}})
    assert pod.metadata.finalizers == [HOLD]

    def job_gone() -> bool:
        try:
            get_status(name, connection=connection)
        except JobNotFoundError as error:
            assert str(error).startswith(f"job {namespace}/{name} not found")
            return True
        return False

    wait_until(job_gone, 30, "the Job to go once its pod is gone")
    with pytest.raises(JobNotFoundError):
        cancel(name, connection=connection)
    assert (output / "result.json").exists()  # outputs are not the Job's to delete


def test_invalid_spec_is_rejected_before_sending(connection, namespace):
    train = TrainConfig(instance_data="s3://photos/dog/", output="s3://runs/dog/")
    with pytest.raises(InvalidSpecError, match="--class-noun") as caught:
        submit(JobSpec(train=train), connection=connection)
    assert caught.value.exit_code == 2
    assert not connection.batch.list_namespaced_job(namespace).items


def test_a_service_account_without_rbac_is_forbidden(control_plane, namespace, tmp_path):
    with control_plane.api_client() as api:
        token = client.CoreV1Api(api).create_namespaced_service_account_token(
            "default", namespace, {"spec": {"audiences": [SERVICE_ACCOUNT_ISSUER]}}).status.token
    kubeconfig = control_plane.kubeconfig(tmp_path / "sa.kubeconfig", namespace, token=token)
    conn = Connection.from_environment(str(kubeconfig), backoff_seconds=0.01)
    with pytest.raises(ForbiddenError, match="forbidden") as caught:
        get_status(job_name("dog"), connection=conn)
    assert caught.value.status == 403 and caught.value.exit_code == 2
    assert f"system:serviceaccount:{namespace}:default" in str(caught.value)
    with pytest.raises(ForbiddenError, match="cannot create resource"):
        submit(spec_for(), connection=conn)


def test_unreachable_server(kubeconfig):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = yaml.safe_load(kubeconfig.read_text())
    data["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"  # nothing listens
    kubeconfig.write_text(yaml.safe_dump(data))
    conn = Connection.from_environment(str(kubeconfig), attempts=2, backoff_seconds=0.01)
    with pytest.raises(ApiUnreachableError, match="unreachable after 2 attempts"):
        submit(spec_for(), connection=conn)


def test_context_and_namespace_come_from_the_kubeconfig(kubeconfig, tmp_path, control_plane):
    data = yaml.safe_load(kubeconfig.read_text())
    current = data["contexts"][0]["context"]
    data["contexts"].append({"name": "other", "context": {"cluster": current["cluster"],
                                                          "user": current["user"]}})
    kubeconfig.write_text(yaml.safe_dump(data))
    assert Connection.from_environment().namespace == current["namespace"]
    other = Connection.from_environment(str(kubeconfig), context="other")
    assert other.namespace == "default"
    assert other.api_client.configuration.host == control_plane.url


def test_in_cluster_config(tmp_path, monkeypatch):
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("not a real CA")
    (tmp_path / "namespace").write_text("training\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setattr(k8s_client, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    conn = Connection.from_environment()
    assert conn.namespace == "training"
    assert conn.api_client.configuration.host == "https://10.0.0.1:443"


def test_missing_configuration_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    with pytest.raises(ClusterConfigError, match="cannot load Kubernetes configuration"):
        Connection.from_environment()


def test_status_reads_the_submitted_jobs_phase(connection):
    name = submit(spec_for(), connection=connection).name
    assert get_status(name, connection=connection).phase == "pending"
    start(connection, name)
    status = get_status(name, connection=connection)
    assert (status.phase, status.subject_id, status.output) == ("running", "dog", "s3://runs/dog/")
