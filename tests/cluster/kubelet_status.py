"""The pod status the stand-in kubelet (kubelet.py) writes, shaped as the kubelet of Kubernetes
v1.36 shapes it (pkg/kubelet/status/generate.go, kubelet_pods.go getPhase): a strategic-merge
patch of pods/status that names only the conditions the kubelet owns, so that conditions others
wrote (PodScheduled, the Eviction API's DisruptionTarget) stay as they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

POD_IP = "127.0.0.1"
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_code_of(returncode: int) -> int:
    """The exit code a container runtime reports: 128 + the signal for a process it killed."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class ContainerState:
    """One container's state as the stand-in knows it."""

    name: str
    image: str
    waiting: tuple[str, str] | None = None  # (reason, message)
    pid: int | None = None
    started_at: str | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    reason: str | None = None  # the terminated state's, when not Completed/Error by the exit code
    message: str = ""

    def status(self) -> dict[str, Any]:
        running = self.pid is not None and self.exit_code is None
        status = {"name": self.name, "image": self.image, "ready": running, "restartCount": 0,
                  "started": running, "lastState": {},
                  "imageID": "" if self.pid is None else image_id(self.image)}
        if self.pid is not None:
            status["containerID"] = f"standin://{self.pid}"
        if self.exit_code is not None:
            reason = self.reason or ("Completed" if self.exit_code == 0 else "Error")
            terminated = {"exitCode": self.exit_code, "reason": reason,
                          "startedAt": self.started_at, "finishedAt": self.finished_at,
                          "containerID": status.get("containerID")}
            if self.message:
                terminated["message"] = self.message
            status["state"] = {"terminated": {k: v for k, v in terminated.items() if v is not None}}
        elif running:
            status["state"] = {"running": {"startedAt": self.started_at}}
        else:
            reason, message = self.waiting or ("ContainerCreating", "")
            status["state"] = {"waiting": {k: v for k, v in (("reason", reason), ("message", message)) if v}}
        return status


def image_id(image: str) -> str:
    """A well-formed, stable image id: the stand-in runs no image, so it is the name's digest."""
    return f"{image.split('@')[0]}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


@dataclass
class PodStatusWriter:
    """The status patches of one pod, keeping each condition's lastTransitionTime until its
    status changes."""

    pod: Mapping[str, Any]
    start_time: str = field(default_factory=now)
    _conditions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def patch(self, containers: list[ContainerState], phase: str, *, reason: str = "",
              message: str = "") -> dict[str, Any]:
        status: dict[str, Any] = {
            "phase": phase, "hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}], "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}], "startTime": self.start_time,
            "conditions": self._conditions_for(containers, phase),
            "containerStatuses": [c.status() for c in containers],
        }
        generation = self.pod["metadata"].get("generation")
        if generation is not None:
            status["observedGeneration"] = generation
        if reason:
            status["reason"], status["message"] = reason, message
        # The uid makes the patch fail on a pod of the same name created since (as the kubelet's).
        return {"metadata": {"uid": self.pod["metadata"]["uid"]}, "status": status}

    def _conditions_for(self, containers: list[ContainerState], phase: str) -> list[dict[str, Any]]:
        terminal = phase in ("Succeeded", "Failed")
        unready = [c.name for c in containers if not c.status()["ready"]]
        if terminal:
            ready = ("False", "PodCompleted" if phase == "Succeeded" else "PodFailed", "")
        elif unready:
            ready = ("False", "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
        else:
            ready = ("True", "", "")
        wanted = {
            "PodReadyToStartContainers": ("False" if terminal else "True", "", ""),
            "Initialized": ("True", "PodCompleted" if phase == "Succeeded" else "", ""),
            "ContainersReady": ready, "Ready": ready,
        }
        return [self._condition(kind, *wanted[kind]) for kind in KUBELET_CONDITIONS]

    def _condition(self, kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        previous = self._conditions.get(kind)
        transition = previous["lastTransitionTime"] if previous and previous["status"] == status else now()
        condition = {"type": kind, "status": status, "lastProbeTime": None,
                     "lastTransitionTime": transition}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        generation = self.pod["metadata"].get("generation")
        if generation is not None:
            condition["observedGeneration"] = generation
        self._conditions[kind] = condition
        return condition
