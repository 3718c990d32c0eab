"""Fixtures of the cluster tests: a real control plane on loopback (control_plane.py), one per
pytest-xdist worker, and a fresh namespace enforcing Pod Security `restricted` per test."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from control_plane import ControlPlane, built_bin_dir
from kubelet import StandInKubelet
from kueue import Kueue

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    plane = ControlPlane(built_bin_dir(), tmp_path_factory.mktemp("control-plane"))
    plane.start()
    yield plane
    plane.stop()


class Cluster:
    """The control plane with its pods running (the stand-in kubelet) and Kueue: a cluster the
    project's Jobs, chart and CLI run on end to end."""

    def __init__(self, plane: ControlPlane, kubelet: StandInKubelet, kueue: Kueue):
        self.plane = plane
        self.kubelet = kubelet
        self.kueue = kueue
        self.api = plane.api_client()

    def helm(self, *args: str, namespace: str, check: bool = True) -> subprocess.CompletedProcess:
        """The Helm v4 CLI built from source, as the admin, in `namespace`; with `check`, a
        non-zero exit fails the test."""
        argv = [str(self.plane.bin_dir / "helm"), *args, "--namespace", namespace,
                "--kubeconfig", str(self.plane.admin_kubeconfig)]
        # Helm's own state (repositories, cache) stays out of the home folder.
        env = {**os.environ, "HELM_CACHE_HOME": str(self.plane.workdir / "helm" / "cache"),
               "HELM_CONFIG_HOME": str(self.plane.workdir / "helm" / "config"),
               "HELM_DATA_HOME": str(self.plane.workdir / "helm" / "data")}
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=300)
        assert result.returncode == 0 or not check, (
            f"helm {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result


@pytest.fixture(scope="session")
def kueue(control_plane, tmp_path_factory):
    """Kueue on the control plane: one per plane (its webhooks and CRD conversion are cluster-wide)."""
    kueue = Kueue(control_plane, tmp_path_factory.mktemp("kueue"))
    kueue.start()
    yield kueue
    kueue.stop()


@pytest.fixture(scope="session")
def cluster(control_plane, kueue, s3_server, tmp_path_factory):
    """The control plane with Kueue, and the pods of the tests' namespaces run as local
    `dreambooth-job` processes (the project's environment is the image) against the test's S3
    server. Pods of a namespace that no test using this fixture created stay Pending."""
    workdir = tmp_path_factory.mktemp("kubelet")
    host_env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    # The image's environment: the package from this checkout, one torch thread per pod.
    host_env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    kubelet = StandInKubelet(control_plane.api_client(), control_plane.node_names, workdir,
                             entrypoint=[str(Path(sys.executable).parent / "dreambooth-job")],
                             env=host_env, namespaces=())
    kubelet.start()
    yield Cluster(control_plane, kubelet, kueue)
    kubelet.stop()
    assert kubelet.errors == []


@pytest.fixture(scope="session")
def tiny_model_uri(s3_server, tiny_model) -> str:
    """The tiny SD pipeline in the S3 server, where the pods load it from."""
    from dreambooth_job.storage import places, s3_client

    bucket = f"models-{uuid.uuid4().hex[:8]}"
    s3_client.s3_client().create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/tiny-sd/"
    places.upload_dir(tiny_model, uri)
    return uri


@pytest.fixture
def namespace(control_plane, request) -> str:
    """A fresh namespace enforcing Pod Security `restricted`; its pods run when the test uses
    `cluster`, and stay Pending otherwise."""
    name = f"c-{uuid.uuid4().hex[:10]}"
    control_plane.create_namespace(name, pod_security="restricted")
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster").kubelet.serve(name)
    return name


@pytest.fixture
def kubeconfig(control_plane, namespace, tmp_path, monkeypatch) -> Path:
    """The admin's kubeconfig with the test's namespace current; KUBECONFIG points at it."""
    return control_plane.use_kubeconfig(tmp_path / "kubeconfig", namespace, monkeypatch)
