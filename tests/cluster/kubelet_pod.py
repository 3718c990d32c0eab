"""One pod's life on the stand-in kubelet (kubelet.py, whose docstring says what is emulated):
start its containers as processes, watch them, signal them on deletion or deadline, and write
the pod's status; one thread per pod.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

import urllib3
from kubelet_api import ApiError
from kubelet_container import (
    ContainerConfigError,
    Launch,
    Sources,
    plan_launch,
    termination_message,
    volume_folders,
)
from kubelet_status import ContainerState, PodStatusWriter, exit_code_of, now

if TYPE_CHECKING:
    from kubelet import StandInKubelet

MIN_GRACE_SECONDS = 2  # the kubelet never kills with less (kuberuntime minimumGracePeriodInSeconds)
DEFAULT_GRACE_SECONDS = 30
START_ERROR_EXIT_CODE = 128  # what containerd reports for a command it cannot execute


def is_terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_deleting(pod: dict[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


class PodRunner:
    def __init__(self, kubelet: StandInKubelet, pod: dict[str, Any]):
        self._kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.node = pod["spec"].get("nodeName")
        self.dir = kubelet.pod_dir(self.namespace, self.name, self.uid)
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"standin-pod-{self.namespace}/{self.name}")
        self._changed = threading.Event()  # a new pod version, a process exit, or gone
        self._lock = threading.Lock()
        self._gone = False
        self._killed = False
        self._finished = False
        self._final_delete_done = False
        self._procs: dict[str, subprocess.Popen] = {}
        self._launches: dict[str, Launch] = {}
        self._states = [ContainerState(c["name"], c.get("image", "")) for c in pod["spec"]["containers"]]
        self._writer = PodStatusWriter(pod)
        self._reason = ("", "")
        self._created = time.monotonic()  # startTime, which activeDeadlineSeconds counts from

    @staticmethod
    def should_start(pod: dict[str, Any]) -> bool:
        """Pending and never started: a pod another kubelet (or an earlier stand-in) ran is not ours."""
        status = pod.get("status") or {}
        started = any("running" in (c.get("state") or {}) or "terminated" in (c.get("state") or {})
                      for c in status.get("containerStatuses") or [])
        return status.get("phase", "Pending") == "Pending" and not started

    def update(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self.pod = pod
            finished = self._finished
        self._changed.set()
        if finished and is_deleting(pod):
            self._final_delete()

    def gone(self) -> None:
        """The pod left the API (force deletion): kill without writing anything."""
        self._gone = True
        self._changed.set()

    def kill_all(self) -> None:
        with self._lock:
            self._killed = True
            procs = list(self._procs.values())
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)

    def _run(self) -> None:
        try:
            if self._start():
                self._supervise()
            self._finish()
        except Exception:
            self._kubelet.record_error(f"running pod {self.namespace}/{self.name}")
            self.kill_all()

    def _stopped(self) -> bool:
        return self._gone or self._kubelet.stopping.is_set()

    def _start(self) -> bool:
        """Starts the containers once their config resolves; False if the pod went first."""
        while not self._stopped() and not is_deleting(self.pod):
            try:
                launches = self._plan()
            except (ContainerConfigError, ApiError) as exc:
                waiting = ("CreateContainerConfigError", str(exc))
                if self._states[0].waiting != waiting:  # written once per distinct error
                    for state in self._states:
                        state.waiting = waiting
                    self._write("Pending")
                self._changed.wait(self._kubelet.config_retry_seconds)
                self._changed.clear()
                continue
            return self._spawn(launches)
        return False

    def _plan(self) -> list[Launch]:
        kubelet = self._kubelet
        folders = volume_folders(self.pod, self.dir, kubelet.workdir / "claims")
        sources = Sources(self.namespace, kubelet.api.get)
        return [plan_launch(self.pod, c, folders=folders, container_dir=self.dir / "containers" / c["name"],
                            entrypoint=kubelet.entrypoint, base_env=kubelet.env, sources=sources,
                            image_workdir=kubelet.image_workdir)
                for c in self.pod["spec"]["containers"]]

    def _spawn(self, launches: list[Launch]) -> bool:
        with self._lock:
            if self._killed:
                return False
            for launch, state in zip(launches, self._states, strict=True):
                self._launches[launch.name] = launch
                state.waiting, state.started_at = None, now()
                with launch.log_path.open("ab") as log_file:
                    try:
                        proc = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd,
                                                stdin=subprocess.DEVNULL, stdout=log_file,
                                                stderr=subprocess.STDOUT, start_new_session=True)
                    except OSError as exc:
                        log_file.write(f"{exc}\n".encode())
                        state.pid, state.exit_code, state.finished_at = 0, START_ERROR_EXIT_CODE, now()
                        state.reason, state.message = "StartError", f"failed to start container: {exc}"
                        continue
                state.pid = proc.pid
                self._procs[launch.name] = proc
                threading.Thread(target=self._await_exit, args=(proc,), daemon=True).start()
        if self._procs:  # else every container failed to start: _finish writes Failed
            self._write("Running")
        return True

    def _await_exit(self, proc: subprocess.Popen) -> None:
        proc.wait()
        self._changed.set()

    def _supervise(self) -> None:
        """Until every process exited: collect exits, and signal on deletion or deadline."""
        term_started = kill_at = None
        deadline_s = self.pod["spec"].get("activeDeadlineSeconds")
        deadline = self._created + deadline_s if deadline_s is not None else None
        while True:
            self._changed.clear()
            if self._collect_exits() and not self._all_exited():
                self._write("Running")
            if self._all_exited():
                return
            grace = self._grace_now(deadline)
            if grace is not None:
                if term_started is None:
                    term_started = time.monotonic()
                    for proc in self._live():
                        _signal_main(proc, signal.SIGTERM)
                kill_at = min(kill_at or float("inf"), term_started + max(grace, MIN_GRACE_SECONDS))
            if kill_at is not None and time.monotonic() >= kill_at:
                for proc in self._live():
                    _signal_group(proc, signal.SIGKILL)
            timers = [t - time.monotonic() for t in (kill_at, deadline) if t is not None]
            self._changed.wait(max(0.05, min([5.0, *timers])))

    def _grace_now(self, deadline: float | None) -> float | None:
        """The grace period to terminate with now, None to let the containers run."""
        pod = self.pod
        if self._stopped():
            return 0
        if is_deleting(pod):
            return pod["metadata"].get("deletionGracePeriodSeconds") or 0
        if deadline is not None and time.monotonic() >= deadline:
            self._reason = ("DeadlineExceeded",
                            "Pod was active on the node longer than the specified deadline")
            grace = pod["spec"].get("terminationGracePeriodSeconds")
            return DEFAULT_GRACE_SECONDS if grace is None else grace
        return None

    def _live(self) -> list[subprocess.Popen]:
        return [p for p in self._procs.values() if p.poll() is None]

    def _all_exited(self) -> bool:
        return all(s.exit_code is not None for s in self._states)

    def _collect_exits(self) -> bool:
        """Records the containers that exited since the last call; whether there was one."""
        changed = False
        for state in self._states:
            proc = self._procs.get(state.name)
            if state.exit_code is not None or proc is None or proc.poll() is None:
                continue
            _signal_group(proc, signal.SIGKILL)  # the container's other processes go with it
            launch = self._launches[state.name]
            state.exit_code, state.finished_at = exit_code_of(proc.returncode), now()
            state.message = termination_message(launch.termination_log, launch.log_path,
                                                launch.message_policy, state.exit_code)
            changed = True
        return changed

    def _finish(self) -> None:
        for proc in self._procs.values():
            _signal_group(proc, signal.SIGKILL)
        started = any(s.pid is not None for s in self._states)
        # Failed: a non-zero exit, or deleted before it started (the kubelet's TerminatePod).
        phase = "Succeeded" if started and all(s.exit_code == 0 for s in self._states) else "Failed"
        self._write(phase, *self._reason)
        with self._lock:
            self._finished = True
            deleting = is_deleting(self.pod)
        if deleting:
            self._final_delete()

    def _write(self, phase: str, reason: str = "", message: str = "") -> None:
        if self._stopped():
            return
        self._writer.pod = self.pod  # the generation it reports observed is the latest it saw
        patch = self._writer.patch(self._states, phase, reason=reason, message=message)
        for attempt in range(6):
            try:
                self._kubelet.api.patch_status(self.namespace, self.name, patch)
                return
            except ApiError as exc:
                if exc.status in (404, 409):  # gone, or a namesake with another uid
                    return
                if exc.status < 500 and exc.status != 429:
                    raise
            except (urllib3.exceptions.HTTPError, OSError):
                pass
            if self._kubelet.stopping.wait(0.2 * 2 ** attempt):
                return
        raise RuntimeError(f"could not write the status of pod {self.namespace}/{self.name}")

    def _final_delete(self) -> None:
        with self._lock:
            if self._final_delete_done or self._stopped():
                return
            self._final_delete_done = True
        try:
            self._kubelet.api.delete_pod_now(self.namespace, self.name, self.uid)
        except Exception:
            self._kubelet.record_error(f"deleting pod {self.namespace}/{self.name}")


def _signal_main(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session: the group's id is the main process's pid
