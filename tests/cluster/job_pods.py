"""What the disruption scenarios (test_preemption.py, test_failures.py) watch and do to a Job's
pods: every pod the Job controller made, as last seen (deleted ones too), their logs as the
stand-in kubelet wrote them, eviction through the Eviction API, SIGKILL of a container's process,
and the subject's Job built with the project's own client."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from workloads import QUICK_OPTIONS, job_condition, wait_until

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.k8s import client as k8s
from dreambooth_job.k8s.pod import CONTAINER_NAME
from dreambooth_job.k8s.status import JOB_NAME_LABEL

REPO = Path(__file__).resolve().parents[2]
# The job's log lines (--log-format json in a pod): the message of each, as the regexes below see it.
CHECKPOINT_WRITTEN = r"checkpoint (\S+/step-(\d+)) written"
RESUMED = r"resuming from checkpoint (\S+) at step (\d+)"


def subject_config(bucket: str, subject: str, photos: str, base_model: str, **options: Any) -> TrainConfig:
    """The quick run of `subject` (QUICK_OPTIONS, `options` over them) into s3://bucket/runs/<subject>/,
    logging every step so that a test can wait for one."""
    return TrainConfig(**{
        **QUICK_OPTIONS, "instance_data": photos, "class_noun": "dog", "subject_id": subject,
        "base_model": base_model, "output": f"s3://{bucket}/runs/{subject}/",
        "log_every": 1, "progress_interval_seconds": 0, "metrics_port": 0, **options})


class PodRecorder:
    """Every pod of Job `job_name`, as last seen, from a list and a watch in a thread: a pod the
    kubelet deleted once it ended (an evicted one) is kept here with its final status."""

    def __init__(self, api: client.ApiClient, namespace: str, job_name: str):
        self._core = client.CoreV1Api(api)
        self._namespace, self._selector = namespace, f"{JOB_NAME_LABEL}={job_name}"
        self._pods: dict[str, dict[str, Any]] = {}  # by uid
        self._deleted: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._follow, daemon=True, name=f"pods-of-{job_name}")
        self.errors: list[str] = []

    def __enter__(self) -> PodRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._watch.stop()
        response = getattr(self._watch, "_resp", None)
        if response is not None:
            with contextlib.suppress(ValueError, OSError):  # already closed: nothing to unblock
                response.shutdown()  # unblocks the thread's read
        self._thread.join(timeout=10)

    def _follow(self) -> None:
        version = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    listing = self._core.list_namespaced_pod(
                        self._namespace, label_selector=self._selector, _preload_content=False)
                    body = json.loads(listing.data)
                    for pod in body["items"]:
                        self._record("ADDED", pod)
                    version = body["metadata"]["resourceVersion"]
                for event in self._watch.stream(
                        self._core.list_namespaced_pod, self._namespace, label_selector=self._selector,
                        resource_version=version, timeout_seconds=30, deserialize=False,
                        allow_watch_bookmarks=True):
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._record(event["type"], obj)
            except Exception as exc:  # noqa: BLE001 - 410 Gone, a dropped connection, stop's shutdown
                if not self._stopping.is_set():
                    # Kept for failure messages only: a re-list below still sees every pod that is
                    # left; only one deleted in between would be missed.
                    self.errors.append(f"watching pods: {exc!r}")
                    version = None
                    self._stopping.wait(0.5)

    def _record(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            self._pods[uid] = pod
            if kind == "DELETED":
                self._deleted.add(uid)

    def pods(self) -> list[dict[str, Any]]:
        """Every pod seen, oldest first (by creation, then name)."""
        with self._lock:
            pods = list(self._pods.values())
        return sorted(pods, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))

    def deleted(self, pod: dict[str, Any]) -> bool:
        with self._lock:
            return pod["metadata"]["uid"] in self._deleted

    def current(self, pod: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._pods[pod["metadata"]["uid"]]

    def wait_for_pods(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """The first `count` pods, once there are that many."""
        return wait_until(lambda: self.pods()[:count] if len(self.pods()) >= count else None,
                          timeout, f"{count} pod(s) of the Job ({self._selector})")[:count]

    def wait_until_terminated(self, pod: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The pod once its container has terminated (the kubelet's status)."""
        wait_until(lambda: terminated(self.current(pod)), timeout,
                   f"pod {pod['metadata']['name']} to terminate")
        return self.current(pod)


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The training container's terminated state, once it has one."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container["name"] == CONTAINER_NAME:
            return (container.get("state") or {}).get("terminated")
    return None


def pod_condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or []
                 if c["type"] == kind and c["status"] == "True"), None)


def timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


# ----------------------------------------------------------------------------------------------
# The container, through the stand-in kubelet

def container_log(kubelet: Any, pod: dict[str, Any]) -> str:
    """The training container's log so far ("" before it started)."""
    meta = pod["metadata"]
    try:
        return kubelet.log_path(meta["namespace"], meta["name"], CONTAINER_NAME).read_text(errors="replace")
    except (KeyError, FileNotFoundError):
        return ""


def wait_for_log(kubelet: Any, pod: dict[str, Any], pattern: str, timeout: float) -> re.Match[str]:
    """The first match of `pattern` in the container's log, once it is written."""
    return wait_until(lambda: re.search(pattern, container_log(kubelet, pod)), timeout,
                      f"{pattern!r} in the log of pod {pod['metadata']['name']}")


def kill_container(pod: dict[str, Any], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the container's main process, as `kill -9` on the node (or the kernel's OOM
    killer) would: the stand-in kubelet's containerID is standin://<pid>."""
    [container] = [c for c in pod["status"]["containerStatuses"] if c["name"] == CONTAINER_NAME]
    scheme, _, pid = container["containerID"].partition("://")
    assert scheme == "standin" and pid.isdigit(), container["containerID"]
    os.kill(int(pid), sig)


# ----------------------------------------------------------------------------------------------
# The API

def evict(api: client.ApiClient, pod: dict[str, Any]) -> int:
    """Evict the pod through the Eviction API (policy/v1), as `kubectl drain` and cluster
    autoscalers do; the HTTP status (201: accepted)."""
    meta = pod["metadata"]
    eviction = client.V1Eviction(api_version="policy/v1", kind="Eviction", metadata=client.V1ObjectMeta(
        name=meta["name"], namespace=meta["namespace"]))
    # The answer is a Status, not the Eviction the client would parse it as: read it raw.
    response = client.CoreV1Api(api).create_namespaced_pod_eviction(
        meta["name"], meta["namespace"], eviction, _preload_content=False)
    return response.status


def finished_job(connection: k8s.Connection, name: str, namespace: str, kind: str,
                 timeout: float) -> client.V1Job:
    """The Job once its condition `kind` (Complete or Failed) is True."""
    def read() -> client.V1Job | None:
        job = k8s.read_job(name, namespace, connection=connection)
        return job if job_condition(job, kind) else None
    return wait_until(read, timeout, f"job {name} to be {kind}")


def status_cli(kubeconfig: Path, *args: str) -> str:
    """`dreambooth-job status ARGS` as a user runs it with the test's kubeconfig: its output."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "dreambooth_job.cli", "status", *args],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
