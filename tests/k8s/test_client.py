"""submit / cancel / errors / retries against the emulated API server, through the official client."""

from __future__ import annotations

import socket

import pytest
import yaml
from k8s_support import complete, set_job_status

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.k8s import (
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


def spec_for(subject="dog", output="s3://runs/dog/", **cluster) -> JobSpec:
    train = TrainConfig(instance_data=f"s3://photos/{subject}/", class_noun="dog", output=output,
                        subject_id=subject)
    return JobSpec(train=train, cluster=ClusterSettings(image="registry/dreambooth-job:1", **cluster))


def test_submit_creates_the_builders_job_in_the_contexts_namespace(connection, namespace, api_server):
    job = submit(spec_for(), connection=connection)
    assert job.created and job.namespace == namespace and job.name == job_name("dog")
    stored = connection.api_client.sanitize_for_serialization(
        connection.batch.read_namespaced_job(job.name, namespace))
    expected = build_job(spec_for())
    expected["metadata"]["namespace"] = namespace
    assert stored == expected


def test_submitting_twice_reports_the_existing_job(connection, namespace):
    first = submit(spec_for(), connection=connection)
    second = submit(spec_for(), connection=connection)
    assert first.created and not second.created and second.name == first.name
    assert len(connection.batch.list_namespaced_job(namespace).items) == 1


def test_replace_recreates_only_a_finished_job(connection, namespace):
    name = submit(spec_for(), connection=connection).name
    with pytest.raises(JobStillRunningError, match="cancel it"):
        submit(spec_for(), replace=True, connection=connection)
    complete(connection, name)
    again = submit(spec_for(), replace=True, connection=connection)
    assert again.created and again.replaced
    assert connection.batch.read_namespaced_job(name, namespace).status is None  # a fresh Job


def test_a_foreign_job_holding_the_name_is_never_adopted(connection, namespace):
    manifest = build_job(spec_for())
    manifest["metadata"]["labels"]["dreambooth-job/subject"] = "someone-else"
    connection.batch.create_namespaced_job(namespace, manifest)
    with pytest.raises(JobExistsError, match="someone-else"):
        submit(spec_for(), connection=connection)


def test_cancel_deletes_in_the_foreground(connection, namespace, api_server, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "result.json").write_text("{}")
    name = submit(spec_for(output=str(output)), connection=connection).name
    cancel(name, connection=connection)
    deletes = api_server.requests("DELETE", f"/namespaces/{namespace}/jobs/{name}")
    assert [dict(r.params) for r in deletes] == [{"propagationPolicy": "Foreground"}]
    with pytest.raises(JobNotFoundError, match=f"job {namespace}/{name} not found"):
        get_status(name, connection=connection)
    with pytest.raises(JobNotFoundError):
        cancel(name, connection=connection)
    assert (output / "result.json").exists()  # outputs are not the Job's to delete


def test_invalid_spec_is_rejected_before_sending(connection, api_server, namespace):
    train = TrainConfig(instance_data="s3://photos/dog/", output="s3://runs/dog/")
    with pytest.raises(InvalidSpecError, match="--class-noun") as caught:
        submit(JobSpec(train=train), connection=connection)
    assert caught.value.exit_code == 2
    assert not api_server.requests("POST", f"/namespaces/{namespace}/")


def test_api_errors_are_typed(connection, namespace, api_server):
    name = job_name("dog")
    api_server.emulator[f"get /apis/batch/v1/namespaces/{namespace}/jobs/{name}"] << 403 << {
        "kind": "Status", "code": 403, "message": 'jobs.batch "x" is forbidden'}
    with pytest.raises(ForbiddenError, match="forbidden") as caught:
        get_status(name, connection=connection)
    assert caught.value.status == 403 and caught.value.exit_code == 2
    api_server.emulator[f"post /apis/batch/v1/namespaces/{namespace}/jobs"] << 422 << {
        "kind": "Status", "code": 422, "message": "spec.template: Required value"}
    with pytest.raises(InvalidSpecError, match="Required value"):
        submit(spec_for(), connection=connection)


def test_429_and_5xx_are_retried_with_backoff(connection, namespace, api_server):
    name = submit(spec_for(), connection=connection).name
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
    api_server.emulator[f"get {path}"][:1] << 429 << {"Retry-After": "7"}
    slept = []
    connection.sleep = slept.append
    assert k8s_client.read_job(name, connection=connection).metadata.name == name
    assert 3.5 <= slept[0] <= 7  # the server's Retry-After, jittered
    # Slices count the requests a view has seen: two GETs so far.
    api_server.emulator[f"get {path}"][2:5] << 503
    slept.clear()
    assert k8s_client.read_job(name, connection=connection).metadata.name == name
    assert len(slept) == 3 and slept[2] > slept[0]  # exponential backoff
    api_server.emulator[f"get {path}"] << 503
    with pytest.raises(ApiUnreachableError, match="503") as caught:
        k8s_client.read_job(name, connection=connection)
    assert caught.value.exit_code == 75


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


def test_context_and_namespace_come_from_the_kubeconfig(kubeconfig, tmp_path, api_server):
    data = yaml.safe_load(kubeconfig.read_text())
    data["contexts"].append({"name": "other", "context": {"cluster": "loopback", "user": "tester"}})
    kubeconfig.write_text(yaml.safe_dump(data))
    assert Connection.from_environment().namespace == data["contexts"][0]["context"]["namespace"]
    other = Connection.from_environment(str(kubeconfig), context="other")
    assert other.namespace == "default"
    assert other.api_client.configuration.host == api_server.url


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
    set_job_status(connection, name, {"active": 1, "ready": 1, "startTime": "2026-11-25T01:00:00Z"})
    status = get_status(name, connection=connection)
    assert (status.phase, status.subject_id, status.output) == ("running", "dog", "s3://runs/dog/")
