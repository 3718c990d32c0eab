"""Fixtures of the cluster tests: a real control plane on loopback (control_plane.py), one per
pytest-xdist worker, and a fresh namespace enforcing Pod Security `restricted` per test."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from control_plane import ControlPlane

REPO = Path(__file__).resolve().parents[2]


def cluster_bin_dir() -> Path:
    """The folder scripts/build-cluster.sh built the binaries into (it builds nothing here)."""
    result = subprocess.run(
        ["scripts/build-cluster.sh", "--print"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            "cluster binaries missing: run scripts/build-cluster.sh "
            f"(--print said: {result.stdout.strip()} {result.stderr.strip()})",
            pytrace=False,
        )
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    plane = ControlPlane(cluster_bin_dir(), tmp_path_factory.mktemp("control-plane"))
    plane.start()
    yield plane
    plane.stop()


# The lead composes the full `cluster` fixture here: this control plane, the stand-in kubelet
# (kubelet.py, StandInKubelet) running the pods bound to plane.node_names, and Kueue (kueue.py) with
# the project's manifests/kueue.


@pytest.fixture
def namespace(control_plane) -> str:
    name = f"c-{uuid.uuid4().hex[:10]}"
    control_plane.create_namespace(name, pod_security="restricted")
    return name


@pytest.fixture
def kubeconfig(control_plane, namespace, tmp_path, monkeypatch) -> Path:
    """The admin's kubeconfig with the test's namespace current; KUBECONFIG points at it."""
    path = control_plane.kubeconfig(tmp_path / "kubeconfig", namespace)
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path
