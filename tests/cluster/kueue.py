"""The real Kueue controller (sigs.k8s.io/kueue/cmd/kueue) as a local process against the test control
plane: its CRDs and webhooks from Kueue's own config/components, the project's manifests/kueue on top.

    kueue = Kueue(plane, workdir)
    kueue.start()                                   # CRDs, the controller, its webhooks; ready to admit
    kueue.apply_project_queues("ml", gpu_quota=1)   # manifests/kueue/base, LocalQueue gpu-batch in "ml"
    ...
    kueue.stop()                                    # webhooks unregistered first, then the process

Kueue runs outside the cluster, with what that changes from a Deployment:
- its webhook server listens on 127.0.0.1 with a self-signed certificate (internalCertManagement off),
  and the webhook configurations and CRD conversion webhooks name it by URL;
- cmd/kueue reads the metrics server's certificate from the fixed path /etc/kueue/metrics/certs whenever
  internalCertManagement is off (a Secret mount in a real install); a self-signed pair is written there
  once if missing;
- the visibility API server (VisibilityOnDemand, an aggregated API served by Kueue) is off, as no
  APIService could reach it; no leader election; it authenticates as the cluster admin.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import kueue_manifests
import yaml
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from processes import ManagedProcess, child_env, free_ports
from workloads import wait_until

KUEUE_GROUP_VERSION = "kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
NAMESPACE = "kueue-system"
FIELD_MANAGER = "dreambooth-job-cluster-tests"
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")  # fixed in cmd/kueue/main.go
START_TIMEOUT = 120.0


def request(api: ApiClient, method: str, path: str, body: Any = None,
            query: dict[str, str] | None = None, content_type: str = "application/json") -> dict[str, Any]:
    """One API request, its JSON answer as a dict (Kueue's 1.4 MB Workload CRD would take the client's
    model classes seconds to deserialize)."""
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    serialized = api.param_serialize(method, path, query_params=list((query or {}).items()),
                                     header_params=headers, body=body, auth_settings=["BearerToken"])
    response = api.call_api(*serialized)
    text = response.read().decode()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=text, data=None)
    return json.loads(text)


def object_path(obj: dict[str, Any]) -> str:
    """The API path of `obj` (every kind applied here has the plural `<kind>s`)."""
    group_version, metadata = obj["apiVersion"], obj["metadata"]
    path = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
    if metadata.get("namespace"):
        path += f"/namespaces/{metadata['namespace']}"
    return f"{path}/{obj['kind'].lower()}s/{metadata['name']}"


def apply(api: ApiClient, obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply of `obj`, as `kubectl apply --server-side --force-conflicts` (what Kueue's
    install docs use: its Workload CRD is too big for client-side apply's annotation)."""
    return request(api, "PATCH", object_path(obj), obj, content_type="application/apply-patch+yaml",
                   query={"fieldManager": FIELD_MANAGER, "force": "true"})


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), None)


def is_true(obj: dict[str, Any], kind: str) -> bool:
    found = condition(obj, kind)
    return bool(found and found["status"] == "True")


def workloads_by_job(api: ApiClient, namespace: str) -> dict[str, dict[str, Any]]:
    """The Workloads Kueue made for the Jobs of `namespace`, by Job name (its owner)."""
    listed = request(api, "GET", f"/apis/{KUEUE_GROUP_VERSION}/namespaces/{namespace}/workloads")
    return {owner["name"]: workload for workload in listed["items"]
            for owner in workload["metadata"].get("ownerReferences", []) if owner["kind"] == "Job"}


class Kueue:
    """Kueue v0.17 on `plane` (a tests/cluster/control_plane.ControlPlane); its files go to `workdir`."""

    def __init__(self, plane: Any, workdir: Path):
        self.plane = plane
        self.workdir = Path(workdir)
        self.binary = Path(plane.bin_dir) / "kueue"
        self.config_dir = kueue_manifests.kueue_config_dir(Path(plane.bin_dir))
        self.webhook_port, self.health_port, self.metrics_port = free_ports(3)
        self.cert_dir = self.workdir / "webhook-certs"  # tls.crt, tls.key: controller-runtime's names
        self.process: ManagedProcess | None = None
        self.webhooks: list[dict[str, Any]] = []
        self.start_seconds: float | None = None
        """From start() to the webhooks answering: what a test session pays for Kueue."""

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def start(self) -> None:
        began = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def _start(self) -> None:
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        ca_bundle = kueue_manifests.write_self_signed(self.cert_dir / "tls.crt", self.cert_dir / "tls.key")
        _ensure_metrics_certificate()
        with self.plane.api_client() as api:
            apply(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
            self._install_crds(api, ca_bundle)
            self.process = ManagedProcess("kueue", self._command(), self.workdir, child_env())
            self.process.start()
            # readyz: the webhook server listens (cmd/kueue's setupProbeEndpoints)
            readyz = f"http://127.0.0.1:{self.health_port}/readyz"
            self.process.wait_ready(lambda: _http_ok(readyz), START_TIMEOUT)
            # Registered once the server listens: with failurePolicy Fail, a registered webhook that
            # cannot be reached refuses every Job and Pod in the cluster.
            self.webhooks = kueue_manifests.webhook_configurations(
                self.config_dir, self.webhook_url, ca_bundle)
            for configuration in self.webhooks:
                apply(api, configuration)
            self.process.wait_ready(lambda: self._job_webhook_suspends(api), START_TIMEOUT)

    def stop(self) -> None:
        """Unregister the webhooks (the cluster admits Jobs and Pods again without Kueue), then stop."""
        if self.webhooks:
            with self.plane.api_client() as api:
                for configuration in self.webhooks:
                    try:
                        request(api, "DELETE", object_path(configuration))
                    except ApiException as error:
                        if error.status != 404:
                            raise
            self.webhooks = []
        if self.process:
            self.process.terminate()
            self.process.reap(time.monotonic() + 15)
            self.process = None

    def apply_project_queues(self, namespace: str, gpu_quota: int | None = None) -> None:
        """manifests/kueue/base with its LocalQueue in `namespace` (and the ClusterQueue's GPU quota
        replaced by `gpu_quota`); returns once the ClusterQueue and LocalQueue are Active."""
        docs = kueue_manifests.project_queues(namespace, gpu_quota)
        with self.plane.api_client() as api:
            for doc in docs:
                apply(api, doc)
            for doc in docs:
                if doc["kind"] in ("ClusterQueue", "LocalQueue"):
                    wait_until(lambda doc=doc: is_true(request(api, "GET", object_path(doc)), "Active"), 60,
                               f"{doc['kind']} {doc['metadata']['name']} Active")

    def _install_crds(self, api: ApiClient, ca_bundle: bytes) -> None:
        crds = kueue_manifests.crds(self.config_dir, self.webhook_url, ca_bundle)
        for crd in crds:
            apply(api, crd)
        for crd in crds:
            wait_until(lambda crd=crd: is_true(request(api, "GET", object_path(crd)), "Established"),
                       60, f"CRD {crd['metadata']['name']} Established")

    def _command(self) -> list[str]:
        if not self.binary.is_file():
            raise FileNotFoundError(f"{self.binary}: build it with scripts/build-cluster.sh")
        return [str(self.binary), f"--config={self._write_config()}",
                f"--kubeconfig={self.plane.admin_kubeconfig}"]

    def _write_config(self) -> Path:
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port,
                        "certDir": str(self.cert_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "integrations": {"frameworks": ["batch/job"]},
            "featureGates": {"VisibilityOnDemand": False},
        }
        path = self.workdir / "controller_manager_config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _job_webhook_suspends(self, api: ApiClient) -> bool:
        """A dry-run create of a queued, unsuspended Job comes back suspended: the apiserver calls
        Kueue's mutating webhook over TLS (the configuration takes a moment to reach the apiserver)."""
        probe = {"apiVersion": "batch/v1", "kind": "Job",
                 "metadata": {"name": "kueue-webhook-probe", "labels": {QUEUE_LABEL: "probe"}},
                 "spec": {"suspend": False, "template": {"spec": {
                     "restartPolicy": "Never", "containers": [{"name": "probe", "image": "probe"}]}}}}
        try:
            created = request(api, "POST", "/apis/batch/v1/namespaces/default/jobs", probe,
                              query={"dryRun": "All"})
        except ApiException:
            return False  # e.g. the webhook's TLS endpoint not answering yet
        return created["spec"].get("suspend") is True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _ensure_metrics_certificate() -> None:
    """cmd/kueue refuses to start without /etc/kueue/metrics/certs/tls.{crt,key} once internal cert
    management is off; any valid pair does, since nothing here scrapes the metrics endpoint."""
    crt, key = METRICS_CERT_DIR / "tls.crt", METRICS_CERT_DIR / "tls.key"
    if crt.is_file() and key.is_file():
        return
    try:
        METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        # Parallel test workers: one writes, the others find the pair (the key first, the certificate
        # renamed into place last, so a present certificate means a complete pair).
        with (METRICS_CERT_DIR / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not crt.is_file():
                new_crt, new_key = crt.with_name("tls.crt.new"), key.with_name("tls.key.new")
                kueue_manifests.write_self_signed(new_crt, new_key, datetime.timedelta(days=3650))
                os.replace(new_key, key)
                os.replace(new_crt, crt)
    except PermissionError as error:
        raise PermissionError(f"Kueue needs a certificate pair in {METRICS_CERT_DIR} (tls.crt, tls.key) "
                              f"and this user cannot write it: {error}") from None
