"""Local server processes for the cluster tests: free loopback ports, one log file per process, a
readiness poll that fails with the log's tail, and a stop that terminates then kills."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from workloads import wait_until

LOG_TAIL_LINES = 40


def free_ports(count: int) -> list[int]:
    """`count` distinct ports the kernel says are free on 127.0.0.1 now.

    The sockets stay bound until all are picked, so one call never returns a port twice. Another
    process may still take one before our server binds it: the window is milliseconds.
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child


def _die_with_parent() -> None:
    # Linux: the child is killed when the process that started it dies, so a killed pytest leaves no
    # apiserver behind holding ports and memory. SIGKILL, not SIGTERM: an apiserver whose etcd got
    # the same SIGTERM hangs in its graceful shutdown.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """One server binary started with its output in `log_dir/<name>.log`."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # preexec_fn only calls prctl(2), already resolved: nothing that takes a lock.
                env=self.env, preexec_fn=_die_with_parent,  # noqa: PLW1509
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, reason: str) -> RuntimeError:
        return RuntimeError(
            f"{self.name} {reason}; last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> None:
        """Poll `probe` until it holds; fail at once, with the log's tail, if the process exits."""

        def ready() -> bool:
            if not self.running():
                raise self.failure(f"exited with code {self.process.returncode if self.process else None}")
            return probe()

        try:
            wait_until(ready, timeout, f"{self.name} to be ready")
        except AssertionError as error:  # wait_until's timeout
            raise self.failure(str(error)) from None

    def rss_mib(self) -> float | None:
        """Resident memory of the process now (VmRSS), in MiB."""
        if not self.running():
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def terminate(self) -> None:
        if self.running():
            self.process.terminate()

    def reap(self, deadline: float) -> None:
        """Wait for the process until `deadline` (monotonic), then SIGKILL it."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def stop_all(processes: Sequence[ManagedProcess], grace: float = 10.0) -> None:
    """SIGTERM every process at once, then SIGKILL whatever still runs after `grace` seconds."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.reap(deadline)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without the in-cluster and kubeconfig variables a server would
    otherwise pick up, plus `extra`."""
    env = {
        key: value for key, value in os.environ.items()
        if key not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
    }
    env.update(extra)
    return env
