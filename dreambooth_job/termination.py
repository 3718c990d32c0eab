"""SIGTERM/SIGINT handling: Kubernetes sends SIGTERM on preemption and eviction, then SIGKILL
after the pod's terminationGracePeriodSeconds. During training the job finishes the current step,
writes a checkpoint and exits with ExitCode.TERMINATED; in any other phase it stops at once
(class images are cached batch by batch, so nothing long is lost).

Two handlers, one after the other. `exit_on_sigterm` is installed by the CLI before it parses
anything: the job is PID 1 in its container, where a signal without a handler is ignored, so
without it a SIGTERM during start-up would wait for the kubelet's SIGKILL. `StopRequest` replaces
it while the job runs (and puts it back after), deferring the stop to a checkpoint in training.

Why a pod failed reaches `kubectl describe` and `dreambooth-job status` through
`write_termination_message`: the kubelet reports the termination-log file as the container's
`state.terminated.message`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dreambooth_job.exit_codes import ExitCode, TerminatedError

log = logging.getLogger(__name__)

# Where the kubelet reads the container's termination message (terminationMessagePath, whose
# default this is); the env variable points it elsewhere (tests) or, set empty, turns it off.
TERMINATION_LOG_ENV = "DREAMBOOTH_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# The kubelet reads at most this many bytes of the file.
MAX_TERMINATION_MESSAGE_BYTES = 4096


def write_termination_message(message: str) -> None:
    """Write `message` (one line) to the termination log, if there is one; never raises.

    The default path is written only when it exists, i.e. when a kubelet mounted it: outside a
    pod the job must not create files under /dev. A path from DREAMBOOTH_TERMINATION_LOG is
    created if its directory exists.
    """
    configured = os.environ.get(TERMINATION_LOG_ENV)
    if configured == "":
        return
    path = Path(configured or DEFAULT_TERMINATION_LOG)
    if configured is None and not path.exists():
        return
    data = (message.strip().replace("\n", " ") + "\n").encode()
    if len(data) > MAX_TERMINATION_MESSAGE_BYTES:
        data = data[:MAX_TERMINATION_MESSAGE_BYTES - 4].decode(errors="ignore").encode() + b"...\n"
    try:
        path.write_bytes(data)
    except OSError as exc:  # a full disk or a read-only path must not hide the error itself
        log.debug("could not write the termination message to %s: %s", path, exc)


def exit_on_sigterm() -> Callable[[], None]:
    """Until the returned function is called, SIGTERM exits at once with ExitCode.TERMINATED.

    For the time outside `StopRequest`: start-up (imports, parsing, connecting) and the end,
    where there is nothing to checkpoint. A no-op outside the main thread, where Python cannot
    install signal handlers (e.g. a CLI test run in a worker thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _exit_at_once)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _exit_at_once(signum, frame) -> None:
    message = f"terminated by {signal.Signals(signum).name} outside training: nothing to checkpoint"
    with contextlib.suppress(OSError):
        # To the file descriptor: the signal may have interrupted a write to sys.stderr, whose
        # buffer refuses a reentrant call.
        os.write(sys.stderr.fileno(), f"error: {message}\n".encode())
    write_termination_message(message)
    # SystemExit, not a JobError: library code that catches Exception (retry loops, optional
    # imports) cannot swallow it.
    raise SystemExit(int(ExitCode.TERMINATED))


class StopRequest:
    def __init__(self, grace_seconds: float):
        self.grace_seconds = grace_seconds
        self.requested_at: float | None = None
        self.signal_name = ""
        self._deferring = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def seconds_left(self) -> float:
        if self.requested_at is None:
            return self.grace_seconds
        return self.grace_seconds - (time.monotonic() - self.requested_at)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def installed(self):
        """The handlers of SIGTERM and SIGINT within this block, the previous ones after it."""
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._deferring and self.requested_at is None:
            self.requested_at, self.signal_name = time.monotonic(), name
            log.warning("%s received: finishing the current step, then checkpointing "
                        "(grace %.0fs)", name, self.grace_seconds)
            return
        # Outside training, or a second signal: stop now.
        raise TerminatedError(f"terminated by {name}")

    @contextlib.contextmanager
    def deferred(self):
        """Within this block a first signal only sets `requested`; the loop decides when to stop."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
