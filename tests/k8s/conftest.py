"""Fixtures of the Kubernetes tests: a real kube-apiserver on loopback (etcd and the apiserver from
scripts/build-cluster.sh, with the garbage collector as its only controller: no Job controller,
scheduler or nodes, so the tests play the Job controller and the kubelet by writing status through
the API), a fresh namespace per test and a kubeconfig whose current context is it.

test_injected_errors.py alone uses kmock's emulator (k8s_support.EmulatedApiServer), for answers a
real server does not give on demand (429 with Retry-After, 503, ...)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

# The control plane's helpers live with the cluster tests (tests/cluster), which pytest puts on
# sys.path only when it collects a test there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from control_plane import API_ONLY_CONTROLLERS, ControlPlane, built_bin_dir  # noqa: E402


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    plane = ControlPlane(built_bin_dir(), tmp_path_factory.mktemp("api-server"), nodes=0,
                         controllers=API_ONLY_CONTROLLERS)
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture
def namespace(control_plane) -> str:
    # One namespace per test keeps the shared server's objects apart.
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.create_namespace(name, pod_security="restricted")
    return name


@pytest.fixture
def kubeconfig(control_plane, namespace, tmp_path, monkeypatch) -> Path:
    """The admin's kubeconfig with the test's namespace current; KUBECONFIG points at it."""
    return control_plane.use_kubeconfig(tmp_path / "kubeconfig", namespace, monkeypatch)


@pytest.fixture
def connection(kubeconfig):
    from dreambooth_job.k8s.client import Connection

    return Connection.from_environment(str(kubeconfig), backoff_seconds=0.01)
