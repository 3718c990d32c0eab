"""SIGTERM/SIGINT handling: Kubernetes sends SIGTERM on preemption and eviction, then SIGKILL
after the pod's terminationGracePeriodSeconds. During training the job finishes the current step,
writes a checkpoint and exits with ExitCode.TERMINATED; in any other phase it stops at once
(class images are cached batch by batch, so nothing long is lost).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time

from dreambooth_job.exit_codes import TerminatedError

log = logging.getLogger(__name__)


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
