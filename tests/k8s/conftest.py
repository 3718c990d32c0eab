"""Fixtures of the Kubernetes tests: an emulated API server on loopback (kmock) and a kubeconfig
whose current context points at it, with a fresh namespace per test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from k8s_support import EmulatedApiServer


@pytest.fixture(scope="session")
def api_server():
    server = EmulatedApiServer()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    # One namespace per test keeps the shared server's objects apart.
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kubeconfig(tmp_path, api_server, namespace, monkeypatch) -> Path:
    """A kubeconfig whose current context points at the emulated server and `namespace`."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "loopback", "cluster": {"server": api_server.url}}],
        "users": [{"name": "tester", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "test", "context": {"cluster": "loopback", "user": "tester",
                                                  "namespace": namespace}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


@pytest.fixture
def connection(kubeconfig):
    from dreambooth_job.k8s.client import Connection

    return Connection.from_environment(str(kubeconfig), backoff_seconds=0.01)


