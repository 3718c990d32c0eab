"""Fixtures for the Kubernetes side: an emulated API server on loopback (kmock) and a kubeconfig.

No kube-apiserver can run here. kmock serves the Jobs and Pods APIs over real HTTP with proper
Status bodies, so the code under test uses the official client exactly as against a cluster.
What kmock does not do (label selectors, uids, the Job controller) is listed in docs/submitting.md;
tests play the Job controller by patching Job status through the API.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO.parent / "shared" / "dreambooth-dataset"


class EmulatedApiServer:
    """kmock's Kubernetes emulator on 127.0.0.1, served from its own event loop thread."""

    def __init__(self) -> None:
        import kmock

        self._kmock = kmock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.emulator, self.server = self._run(self._start())
        self.url = str(self.server.url).rstrip("/")

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    async def _start(self):
        kmock = self._kmock
        emulator = kmock.KubernetesEmulator()
        emulator.resources["batch/v1/jobs"] = kmock.ResourceInfo(
            kind="Job", singular="job", namespaced=True, subresources={"status"})
        emulator.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", singular="pod", namespaced=True)
        await emulator.__aenter__()
        server = kmock.Server(emulator)
        await server.__aenter__()
        return emulator, server

    def requests(self, method: str | None = None, path_contains: str = "") -> list:
        return [r for r in list(self.emulator)
                if (method is None or str(r.method).upper().endswith(method.upper()))
                and path_contains in r.url.path]

    def stop(self) -> None:
        async def stop():
            await self.server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)

        self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


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


def set_job_status(connection, name: str, status: dict, namespace: str | None = None) -> None:
    """Play the Job controller: write `status` (camelCase) onto the Job through the API."""
    connection.batch.patch_namespaced_job_status(name, namespace or connection.namespace,
                                                 {"status": status})


def complete(connection, name: str, namespace: str | None = None) -> None:
    set_job_status(connection, name, {
        "startTime": "2026-11-25T01:00:00Z", "completionTime": "2026-11-25T01:20:00Z",
        "succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-25T01:20:00Z"}]},
        namespace)


def dataset_subjects() -> list[tuple[str, str]]:
    """(subject, class noun) of the 30 DreamBooth subjects, from prompts_and_classes.txt."""
    lines = (DATASET / "prompts_and_classes.txt").read_text().splitlines()
    start = lines.index("subject_name,class") + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        subject, noun = line.split(",", 1)
        rows.append((subject.strip(), noun.strip()))
    return rows
