"""A real Kubernetes control plane on loopback, from the binaries scripts/build-cluster.sh builds.

Everything listens on 127.0.0.1 on ports the kernel picked free, and keeps its files under `workdir`
(logs in workdir/logs/<name>.log), so pytest-xdist workers each run their own plane side by side.
What runs, and the flags that matter:

- etcd: one member, data in workdir/etcd, `--unsafe-no-fsync` (a test cluster's data is thrown away;
  fsync on a shared disk is what makes etcd slow).
- kube-apiserver: `--authorization-mode=Node,RBAC`; clients authenticate with certificates of one CA
  (`--client-ca-file`; the admin's carries O=system:masters) or service-account tokens
  (`--service-account-issuer`, `--service-account-key-file`, `--service-account-signing-key-file`,
  `--api-audiences`, so the TokenRequest API issues tokens). Pod Security admission is in the
  default plugins; namespaces opt in with their pod-security.kubernetes.io labels.
  `--allow-privileged=true`, so a privileged pod is refused by Pod Security, not by validation.
  `--disable-admission-plugins=TaintNodesByCondition`: that plugin taints every new Node not-ready
  until the node-lifecycle controller lifts it, and we do not run that controller (it would evict
  pods whenever a busy machine delays kwok's heartbeats).
- kube-controller-manager: `--controllers` lists only CONTROLLERS (Job, TTL-after-finished,
  garbage collector, service accounts and their tokens, namespace deletion, pod GC, the
  kube-root-ca.crt publisher); `--leader-elect=false`; `--service-account-private-key-file`,
  `--root-ca-file`.
- kube-scheduler: `--leader-elect=false`, default profile.
- kwok: manages the Nodes labelled type=kwok (`--manage-nodes-with-label-selector`) with the node
  Stages of kwok-node-stages.yaml only (Ready conditions, node leases): it never touches a pod.
  KWOK_WORKDIR points into workdir so ~/.kwok/kwok.yaml is never read.

The controller-manager, scheduler and kwok use the admin kubeconfig (no per-controller identities).
Measured on the 2-core dev machine (v1.36.3, kwok v0.8.0): start() takes 6-15 s to three Ready nodes;
resident memory after start is about etcd 44 MiB, kube-apiserver 280, kube-controller-manager 87,
kube-scheduler 70, kwok 57 (540 MiB a plane); stop() takes about 1 s.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from pki import make_pki
from processes import ManagedProcess, child_env, free_ports, stop_all
from workloads import wait_until

HERE = Path(__file__).resolve().parent
KWOK_STAGES = HERE / "kwok-node-stages.yaml"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
CONTROLLERS = (
    "job-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
)
# An API server for tests that play the Job controller and the kubelet themselves (tests/k8s): only
# the garbage collector, which finishes foreground deletions (`cancel`) and never writes a status.
# Without the serviceaccount controller create_namespace makes `default` itself, in milliseconds
# where waiting for the controller takes about 0.8 s a namespace.
API_ONLY_CONTROLLERS = ("garbage-collector-controller",)
NODE_LABEL = {"type": "kwok"}


def built_bin_dir() -> Path:
    """The folder scripts/build-cluster.sh built the binaries into (it builds nothing here);
    fails the test, saying what to run, when they are missing."""
    result = subprocess.run(["scripts/build-cluster.sh", "--print"], cwd=HERE.parents[1],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail("cluster binaries missing: run scripts/build-cluster.sh "
                    f"(--print said: {result.stdout.strip()} {result.stderr.strip()})", pytrace=False)
    return Path(result.stdout.strip().splitlines()[-1])
# Generous: on a 2-core machine shared with other workers the apiserver alone takes 10-30 s.
STARTUP_TIMEOUT = 180.0


class ControlPlane:
    def __init__(self, bin_dir: Path, workdir: Path, nodes: int = 3, gpus_per_node: int = 8,
                 controllers: tuple[str, ...] = CONTROLLERS):
        """`controllers`: the controller-manager's --controllers (empty: no controller-manager);
        `nodes=0`: no scheduler, no kwok, no Nodes. ControlPlane(..., nodes=0,
        controllers=API_ONLY_CONTROLLERS) is the API server alone for tests that write Job and pod
        status themselves, which a running Job controller, scheduler or kwok would overwrite."""
        self.controllers = tuple(controllers)
        self.bin_dir = Path(bin_dir)
        self.workdir = Path(workdir)
        self.node_names = [f"kwok-gpu-{index}" for index in range(nodes)]
        self.gpus_per_node = gpus_per_node
        self.log_dir = self.workdir / "logs"
        self.ca_file = self.workdir / "pki" / "ca.crt"
        self.admin_kubeconfig = self.workdir / "admin.kubeconfig"
        self.url = ""
        self.processes: list[ManagedProcess] = []
        self.start_seconds: float | None = None  # wall time of start(), for the record

    # ---- lifecycle

    def start(self) -> None:
        began = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(self.workdir / "pki")
        # Each port is picked just before its server binds it: a port picked seconds earlier can be
        # taken meanwhile as the local port of some process's outgoing connection.
        etcd_port, peer_port = free_ports(2)
        etcd = self._spawn("etcd", self._etcd_argv(etcd_port, peer_port))
        etcd.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), STARTUP_TIMEOUT)
        (api_port,) = free_ports(1)
        self.url = f"https://127.0.0.1:{api_port}"
        apiserver = self._spawn("kube-apiserver", self._apiserver_argv(api_port, etcd_port))
        apiserver.wait_ready(lambda: _http_ok(f"{self.url}/readyz", self._admin_tls()), STARTUP_TIMEOUT)
        self.kubeconfig(self.admin_kubeconfig, "default")

        # These three only need the apiserver: start them together, then wait for each.
        kcm_port, scheduler_port = free_ports(2)
        insecure = ssl._create_unverified_context()  # their serving certs are self-signed
        if self.controllers:
            kcm = self._spawn("kube-controller-manager", self._controller_manager_argv(kcm_port))
        if self.node_names:
            scheduler = self._spawn("kube-scheduler", self._scheduler_argv(scheduler_port))
            kwok_env = child_env(KWOK_WORKDIR=str(self.workdir / "kwok"))
            kwok = self._spawn("kwok", self._kwok_argv(), env=kwok_env)
        if self.controllers:
            kcm.wait_ready(
                lambda: _http_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure), STARTUP_TIMEOUT
            )
        if self.node_names:
            scheduler.wait_ready(
                lambda: _http_ok(f"https://127.0.0.1:{scheduler_port}/healthz", insecure), STARTUP_TIMEOUT
            )
            self._create_nodes()
            kwok.wait_ready(self._nodes_ready, STARTUP_TIMEOUT)

    def stop(self) -> None:
        """Terminate every process (SIGTERM, SIGKILL after 10 s). Safe to call twice.

        etcd goes last: an apiserver that loses etcd first hangs in its shutdown retrying it, and
        etcd waits for the apiserver's open connections before it exits.
        """
        stop_all([process for process in reversed(self.processes) if process.name != "etcd"])
        stop_all([process for process in self.processes if process.name == "etcd"])

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def rss_mib(self) -> dict[str, float | None]:
        """Each process's resident memory now, in MiB."""
        return {process.name: process.rss_mib() for process in self.processes}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        process = ManagedProcess(name, [str(self.bin_dir / name), *argv], self.log_dir, env or child_env())
        self.processes.append(process)
        process.start()
        return process

    # ---- command lines

    def _etcd_argv(self, client_port: int, peer_port: int) -> list[str]:
        client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        return [
            "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}", "--unsafe-no-fsync", "--log-level=warn",
        ]

    def _apiserver_argv(self, port: int, etcd_port: int) -> list[str]:
        pki = self.pki
        return [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'kube-apiserver'}",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--disable-admission-plugins=TaintNodesByCondition",
            "--profiling=false",
        ]

    def _component_kubeconfig_flags(self, name: str, port: int) -> list[str]:
        kubeconfig = self.admin_kubeconfig
        return [
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={port}", f"--cert-dir={self.workdir / name}",
            "--profiling=false",
        ]

    def _controller_manager_argv(self, port: int) -> list[str]:
        return [
            *self._component_kubeconfig_flags("kube-controller-manager", port),
            f"--controllers={','.join(self.controllers)}",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca_cert}",
        ]

    def _scheduler_argv(self, port: int) -> list[str]:
        return self._component_kubeconfig_flags("kube-scheduler", port)

    def _kwok_argv(self) -> list[str]:
        selector = ",".join(f"{key}={value}" for key, value in NODE_LABEL.items())
        return [
            f"--kubeconfig={self.admin_kubeconfig}", f"--config={KWOK_STAGES}",
            f"--manage-nodes-with-label-selector={selector}", "--node-lease-duration-seconds=40",
        ]

    # ---- clients and objects

    def _admin_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def api_client(self):
        """A kubernetes.client.ApiClient authenticated as the admin (system:masters)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.admin_kubeconfig))

    def kubeconfig(self, path: Path, namespace: str, token: str | None = None) -> Path:
        """Write a kubeconfig for the admin, or for a bearer `token` (e.g. a ServiceAccount's from the
        TokenRequest API), whose context's namespace is `namespace`."""
        if token is None:
            user = {"client-certificate": str(self.pki.admin_cert), "client-key": str(self.pki.admin_key)}
        else:
            user = {"token": token}
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "test", "context": {
                "cluster": "test", "user": "user", "namespace": namespace}}],
            "current-context": "test",
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        path.chmod(0o600)
        return path

    def use_kubeconfig(self, path: Path, namespace: str, monkeypatch) -> Path:
        """Write the admin's kubeconfig with `namespace` current and point KUBECONFIG at it for
        the test (no in-cluster configuration)."""
        self.kubeconfig(path, namespace)
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        return path

    def create_namespace(self, name: str, pod_security: str = "restricted") -> None:
        """Create namespace `name` enforcing Pod Security level `pod_security`, and wait for its
        `default` ServiceAccount (the serviceaccount controller makes it; without that controller,
        this creates it: the ServiceAccount admission plugin refuses pods whose account is missing)."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        labels = {
            "pod-security.kubernetes.io/enforce": pod_security,
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": name, "labels": labels}})
            if "serviceaccount-controller" not in self.controllers:
                core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})

            def has_default_account() -> bool:
                try:
                    core.read_namespaced_service_account("default", name)
                except ApiException as error:
                    if error.status == 404:
                        return False
                    raise
                return True

            wait_until(has_default_account, 60, f"the default ServiceAccount of namespace {name}")

    def _create_nodes(self) -> None:
        from kubernetes import client

        resources = {
            "cpu": "128", "memory": "1Ti", "ephemeral-storage": "4Ti", "pods": "110",
            "nvidia.com/gpu": str(self.gpus_per_node),
        }
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            for name in self.node_names:
                labels = {
                    **NODE_LABEL, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                }
                # Nodes take their status on create: kwok's node-initialize stage keeps this capacity.
                core.create_node({
                    "metadata": {"name": name, "labels": labels},
                    "status": {"capacity": resources, "allocatable": resources},
                })

    def _nodes_ready(self) -> bool:
        from kubernetes import client

        with self.api_client() as api:
            nodes = client.CoreV1Api(api).list_node(label_selector="type=kwok").items
        ready = {
            node.metadata.name for node in nodes
            if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        }
        return ready >= set(self.node_names)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """Whether GET `url` answers 200 now (etcd's /health must also say it is healthy)."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            body = response.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False
    if url.endswith("/health"):
        return json.loads(body).get("health") == "true"
    return True
