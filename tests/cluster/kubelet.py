"""A stand-in for the kubelet of Kubernetes v1.36, for the cluster tests: it runs the pods that the
scheduler (or a test) binds to its nodes as local processes, the project's environment being the
image, and writes their status back to the real apiserver as a kubelet does.

What it does, for each pod whose spec.nodeName is one of its nodes (one list+watch per node,
re-listed on 410 Gone):
- Each container of spec.containers runs as one process, all at once: argv = command (or the
  image's ENTRYPOINT, the `entrypoint` given) followed by args, with `$(NAME)` expanded from the
  container's env as Kubernetes does (`$$` is `$`, an undefined name stays as written). Its env
  is the `env` given (the host's basics, standing in for the image's ENV), then HOSTNAME (the
  pod's name), then TMPDIR (see below), then the container's env resolved as the kubelet does:
  envFrom (ConfigMap, Secret, prefix), then env in order, `value` expanding the variables before
  it, valueFrom.secretKeyRef and configMapKeyRef read from the API (optional honoured),
  valueFrom.fieldRef (metadata.name, namespace, uid, labels['..'], annotations['..'],
  spec.nodeName, spec.serviceAccountName, status.podIP(s), status.hostIP(s)). A missing Secret,
  ConfigMap or key that is not optional leaves the container waiting with reason
  CreateContainerConfigError and the kubelet's message, the pod Pending, and is retried every
  `config_retry_seconds` (the kubelet backs off from 10 s) until it resolves or the pod is deleted.
- Volumes: every volume is a folder under `workdir`: a persistentVolumeClaim's is shared by the
  namespace's pods naming that claim (and outlives them), any other kind's (emptyDir, but also
  secret, configMap, projected) is the pod's own, created empty. A volumeMount (with its subPath)
  maps its mountPath to that folder. A process cannot see the folder at the mountPath, so every
  env value and every element of command and args (after expansion) that equals a mountPath, or
  starts with it followed by "/", is rewritten to the folder (the longest mountPath wins); text
  elsewhere in a value (`--out=/cache/x`, a shell script naming /tmp) is NOT rewritten. With a
  mount at /tmp, TMPDIR is set to its folder (the container's own TMPDIR, if any, wins). The
  working directory is workingDir, else the image's WORKDIR (`image_workdir`, /tmp as the
  Dockerfile's), where a mount backs it, else the container's own folder.
- Termination message: terminationMessagePath (default /dev/termination-log) is backed by an
  empty per-container file, handed to the process in DREAMBOOTH_TERMINATION_LOG (the job's
  override of that path, termination.py; set last, it wins over the container's own) and by the
  rewriting above. On exit, the message is the file's last 4096 bytes; with
  terminationMessagePolicy FallbackToLogsOnError, a non-zero exit and an empty file, the log's
  last 80 lines, at most 2048 bytes. stdout and stderr go, interleaved and without the CRI's
  timestamps, to one log file per container: `log_path(namespace, pod, container)`.
- Status, patched (strategic merge on pods/status, with the pod's uid as a precondition): phase
  Pending/Running/Succeeded/Failed as the kubelet's getPhase for restartPolicy Never; podIP(s) and
  hostIP(s) 127.0.0.1; startTime; the kubelet's own conditions (PodReadyToStartContainers,
  Initialized, ContainersReady, Ready; no readiness probes, so Ready once running) and no other,
  so PodScheduled and the Eviction API's DisruptionTarget stay; containerStatuses with state
  waiting/running/terminated (exitCode, reason Completed or Error, message, startedAt,
  finishedAt, containerID "standin://<pid>"), ready, started, restartCount 0, image and a
  well-formed fake imageID. A process killed by a signal exits 128 + the signal (SIGTERM 143,
  SIGKILL 137), as a container runtime reports; a command that cannot be executed ends at once
  with exit code 128 and reason StartError.
- Termination: once the pod has metadata.deletionTimestamp, SIGTERM goes to the container's main
  process only (a runtime signals the container's PID 1), SIGKILL to its whole process group
  after metadata.deletionGracePeriodSeconds (at least 2 s, the kubelet's minimum; a shorter grace
  period of a later delete shortens it). When a main process exits, what is left of its process
  group is SIGKILLed (the container's cgroup goes with it). Then the terminated status is
  written and the pod deleted with gracePeriodSeconds 0 and a uid precondition, as the kubelet
  does (finalizers such as the Job controller's keep it until their owner removes them). A pod
  deleted before its containers started never starts: phase Failed, then that same deletion. A
  pod that finished earlier is deleted likewise when its deletionTimestamp comes. A pod removed
  from the API at once (force delete) gets SIGTERM, SIGKILL 2 s later, and no status.
- spec.activeDeadlineSeconds (from startTime, when the stand-in first saw the pod; checked once
  the containers run): SIGTERM, SIGKILL after terminationGracePeriodSeconds, phase Failed with
  reason DeadlineExceeded.

What it does NOT emulate:
- The image: every pod runs in the project's environment whatever spec.containers[].image
  says; imagePullPolicy, imagePullSecrets and image pulls do nothing.
- GPUs and devices: processes run on the CPU; nvidia.com/gpu is only what the nodes advertise.
- Resources: no cgroup limits, no OOM kill (never reason OOMKilled), no ephemeral-storage or
  emptyDir sizeLimit eviction, no node-pressure eviction; resourceFieldRef env is refused
  (CreateContainerConfigError).
- Volumes beyond folders: secret, configMap, downwardAPI and projected volumes are empty; no
  hostPath, no readOnly, no medium Memory, no fsGroup ownership; the service-account token is
  not mounted, and no KUBERNETES_SERVICE_* or service-link env is set.
- PID 1: the main process is not its namespace's init, so a process with no SIGTERM handler
  (a bare `sh -c`) dies of SIGTERM at once (143), where as a container's PID 1 it would ignore it
  until the SIGKILL (137). The job installs its handler first thing (cli.py), so it is unaffected.
- securityContext and isolation: runAsUser/runAsGroup/runAsNonRoot, readOnlyRootFilesystem,
  capabilities, seccomp, AppArmor, privileged: processes run as the test's user in the host's
  file system, network and PID namespaces (every pod's IP is 127.0.0.1; ports may clash).
- initContainers and sidecars (not run), probes (liveness, readiness, startup), lifecycle hooks
  (postStart, preStop), restarts: restartPolicy is treated as Never (the project's Jobs use
  Never), restartCount stays 0.
- The kubelet's API: no node status or leases (the nodes are kwok's), no pods/log,
  pods/exec, port-forward, metrics or stats; read logs with `log_path`.
- Pods it did not start: a pod that is already Running when the stand-in starts is left alone.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import urllib3
from kubelet_api import ApiError, PodApi
from kubelet_pod import PodRunner, is_deleting, is_terminal

log = logging.getLogger(__name__)


class StandInKubelet:
    """Runs the pods bound to `node_names` (see the module docstring) until `stop`."""

    def __init__(self, api_client: Any, node_names: Sequence[str], workdir: Path,
                 entrypoint: Sequence[str], env: Mapping[str, str], *, image_workdir: str = "/tmp",
                 config_retry_seconds: float = 2.0, watch_timeout_seconds: int = 60,
                 namespaces: Iterable[str] | None = None):
        self.api = PodApi(api_client)
        # The namespaces whose pods it runs (None: all); others' stay Pending, as on a node without
        # a kubelet, so tests that need pods not to run can share the nodes. `serve` adds one.
        self._namespaces = None if namespaces is None else set(namespaces)
        self.node_names = tuple(node_names)
        self.workdir = Path(workdir)
        self.entrypoint = list(entrypoint)
        self.env = dict(env)
        self.image_workdir = image_workdir
        self.config_retry_seconds = config_retry_seconds
        self._watch_timeout = watch_timeout_seconds
        self.stopping = threading.Event()
        # Unexpected exceptions of its threads, each with its traceback: tests can assert none.
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._runners: dict[str, PodRunner] = {}  # by pod uid, until the pod leaves the API
        self._pod_dirs: dict[tuple[str, str], Path] = {}  # (namespace, name): its latest pod's folder
        self._deleted_unknown: set[str] = set()
        self._watchers: list[threading.Thread] = []
        self._responses: set[urllib3.BaseHTTPResponse] = set()
        self._stopped = False

    def start(self) -> None:
        for node in self.node_names:
            thread = threading.Thread(target=self._watch_node, args=(node,), daemon=True,
                                      name=f"standin-kubelet-{node}")
            thread.start()
            self._watchers.append(thread)

    def stop(self) -> None:
        """SIGKILL every process it started, end its watches and join its threads; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        with self._lock:
            runners = list(self._runners.values())
            responses = list(self._responses)
        for runner in runners:
            runner.kill_all()
        for response in responses:
            shutdown = getattr(response, "shutdown", None)  # urllib3 >= 2.3; else the watch times out
            if shutdown is not None:
                shutdown()  # unblocks the watcher's read
        for thread in [*(r.thread for r in runners), *self._watchers]:
            if thread.ident is not None:
                thread.join(timeout=10)

    def serve(self, namespace: str) -> None:
        """Run the pods of `namespace` from now on: call it before its pods are created."""
        with self._lock:
            if self._namespaces is not None:
                self._namespaces.add(namespace)

    def pod_dir(self, namespace: str, name: str, uid: str) -> Path:
        return self.workdir / "pods" / f"{namespace}_{name}_{uid}"

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        """The log (stdout and stderr) of `container` of the latest pod `namespace/pod` it ran."""
        with self._lock:
            pod_dir = self._pod_dirs.get((namespace, pod))
        if pod_dir is None:
            raise KeyError(f"the stand-in kubelet has not run pod {namespace}/{pod}")
        return pod_dir / "containers" / container / "0.log"

    def record_error(self, what: str) -> None:
        message = f"{what}:\n{traceback.format_exc()}"
        log.error("stand-in kubelet: %s", message)
        self.errors.append(message)

    def _watch_node(self, node: str) -> None:
        resource_version = None
        while not self.stopping.is_set():
            try:
                if resource_version is None:
                    listing = self.api.list_pods(node)
                    self._reconcile(node, listing.get("items") or [])
                    resource_version = listing["metadata"]["resourceVersion"]
                resource_version = self._follow(node, resource_version)
            except ApiError as exc:
                if exc.status == 410:
                    resource_version = None
                elif not self.stopping.is_set():
                    log.warning("stand-in kubelet: watching %s: %s", node, exc)
                    self.stopping.wait(1)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                # The connection dropped (an apiserver restart, or stop): watch again from where it was.
                if not self.stopping.is_set():
                    log.warning("stand-in kubelet: watching %s: %r", node, exc)
                    self.stopping.wait(1)
            except Exception:
                self.record_error(f"watching node {node}")
                self.stopping.wait(1)

    def _follow(self, node: str, resource_version: str) -> str | None:
        """Handles the events of one watch request; the resourceVersion to watch from next, or
        None to re-list (410 Gone)."""
        response = self.api.watch_pods(node, resource_version, self._watch_timeout)
        with self._lock:
            self._responses.add(response)
        try:
            for event in PodApi.events(response):
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise ApiError(obj.get("code", 500), obj)
                resource_version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self._dispatch(kind, obj)
                if self.stopping.is_set():
                    break
        finally:
            with self._lock:
                self._responses.discard(response)
            response.release_conn()
        return resource_version

    def _reconcile(self, node: str, pods: list[dict[str, Any]]) -> None:
        listed = {p["metadata"]["uid"] for p in pods}
        with self._lock:
            vanished = [r.pod for uid, r in self._runners.items() if r.node == node and uid not in listed]
        for pod in vanished:
            self._dispatch("DELETED", pod)
        for pod in pods:
            self._dispatch("MODIFIED", pod)

    def _dispatch(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            if self.stopping.is_set():
                return
            if self._namespaces is not None and meta["namespace"] not in self._namespaces:
                return
            runner = self._runners.get(uid)
            if kind == "DELETED":
                if runner is not None:
                    del self._runners[uid]
                    runner.gone()
                return
            if runner is None and PodRunner.should_start(pod):
                runner = PodRunner(self, pod)
                self._runners[uid] = runner
                self._pod_dirs[meta["namespace"], meta["name"]] = runner.dir
                runner.thread.start()
                return
            # A pod that finished before this stand-in saw it is still the kubelet's to delete.
            delete_unknown = (runner is None and is_deleting(pod) and is_terminal(pod)
                              and uid not in self._deleted_unknown)
            if delete_unknown:
                self._deleted_unknown.add(uid)
        if runner is not None:
            runner.update(pod)
        elif delete_unknown:
            try:
                self.api.delete_pod_now(meta["namespace"], meta["name"], uid)
            except Exception:
                self.record_error(f"deleting pod {meta['namespace']}/{meta['name']}")
