"""Error answers a real kube-apiserver does not give on demand, injected with kmock's emulator: the
client maps them to typed errors and retries 429 (honouring Retry-After) and 5xx with backoff.
Everything else in tests/k8s runs against a real kube-apiserver (conftest.py); a real 403 (RBAC)
is in test_client.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from k8s_support import EmulatedApiServer

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.k8s import (
    ApiUnreachableError,
    ClusterSettings,
    Connection,
    ForbiddenError,
    InvalidSpecError,
    JobSpec,
    get_status,
    job_name,
    submit,
)
from dreambooth_job.k8s import client as k8s_client


@pytest.fixture(scope="module")
def emulated():
    server = EmulatedApiServer()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    # Injected answers stay on their path for the module's server: one namespace per test.
    return f"i-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def connection(emulated, namespace, tmp_path, monkeypatch) -> Connection:
    """A connection to the emulator through a kubeconfig, as `dreambooth-job` makes it."""
    path: Path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "loopback", "cluster": {"server": emulated.url}}],
        "users": [{"name": "tester", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "test", "context": {"cluster": "loopback", "user": "tester",
                                                  "namespace": namespace}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return Connection.from_environment(str(path), backoff_seconds=0.01)


def spec_for(subject: str) -> JobSpec:
    train = TrainConfig(instance_data=f"s3://photos/{subject}/", class_noun="dog",
                        output=f"s3://runs/{subject}/", subject_id=subject)
    return JobSpec(train=train, cluster=ClusterSettings(image="registry/dreambooth-job:1"))


def test_api_errors_are_typed(connection, emulated, namespace):
    name = job_name("dog")
    emulated.emulator[f"get /apis/batch/v1/namespaces/{namespace}/jobs/{name}"] << 403 << {
        "kind": "Status", "code": 403, "message": 'jobs.batch "x" is forbidden'}
    with pytest.raises(ForbiddenError, match="forbidden") as caught:
        get_status(name, connection=connection)
    assert caught.value.status == 403 and caught.value.exit_code == 2
    emulated.emulator[f"post /apis/batch/v1/namespaces/{namespace}/jobs"] << 422 << {
        "kind": "Status", "code": 422, "message": "spec.template: Required value"}
    with pytest.raises(InvalidSpecError, match="Required value"):
        submit(spec_for("dog"), connection=connection)


def test_429_and_5xx_are_retried_with_backoff(connection, emulated, namespace):
    name = submit(spec_for("dog"), connection=connection).name
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
    emulated.emulator[f"get {path}"][:1] << 429 << {"Retry-After": "7"}
    slept = []
    connection.sleep = slept.append
    assert k8s_client.read_job(name, connection=connection).metadata.name == name
    assert 3.5 <= slept[0] <= 7  # the server's Retry-After, jittered
    # Slices count the requests a view has seen: two GETs so far.
    emulated.emulator[f"get {path}"][2:5] << 503
    slept.clear()
    assert k8s_client.read_job(name, connection=connection).metadata.name == name
    assert len(slept) == 3 and slept[2] > slept[0]  # exponential backoff
    emulated.emulator[f"get {path}"] << 503
    with pytest.raises(ApiUnreachableError, match="503") as caught:
        k8s_client.read_job(name, connection=connection)
    assert caught.value.exit_code == 75
