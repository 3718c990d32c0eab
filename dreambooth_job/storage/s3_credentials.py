"""Waiting for S3 credentials at start-up, for a bounded time.

In the first seconds of a pod, IRSA's web identity token or the EKS pod identity agent may not be
ready yet: boto3 finds no credentials, or S3/STS rejects a token as expired or invalid. These are
retried with backoff until `--storage-credentials-wait-seconds` (default 60) after the process's
first S3 call, then end the job with the retryable exit code 75. Credential errors later in the
run fail at once, also with 75. AccessDenied is not a credentials problem: it stays exit 2.

    storage.set_credentials_wait(60)   # the job does this from its config
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from dreambooth_job.exit_codes import RetryableError

DEFAULT_WAIT_SECONDS = 60.0
# S3/STS error codes that mean "these credentials are not (yet) valid", as opposed to "not
# allowed" (AccessDenied), which no wait fixes.
CREDENTIAL_ERROR_CODES = frozenset({
    "ExpiredToken", "ExpiredTokenException", "InvalidToken", "TokenRefreshRequired",
    "InvalidIdentityToken", "IDPCommunicationError"})

log = logging.getLogger("dreambooth_job.storage.places")

_P = ParamSpec("_P")
_R = TypeVar("_R")


class CredentialsNotReady(RetryableError):
    """No usable S3 credentials: none found, or a token that S3/STS does not (yet) accept."""


@dataclass
class CredentialsWait:
    """The window, counted from the first S3 call, in which credential errors are retried."""

    seconds: float = DEFAULT_WAIT_SECONDS
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    first_delay: float = 1.0
    max_delay: float = 10.0
    _deadline: float | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def start(self) -> None:
        with self._lock:
            if self._deadline is None:
                self._deadline = self.clock() + self.seconds

    def delay(self, attempt: int) -> float | None:
        """Seconds to wait before try `attempt + 1` (doubling, capped), or None once the window
        is over."""
        if self._deadline is None:
            raise RuntimeError("CredentialsWait.delay() before start()")
        remaining = self._deadline - self.clock()
        if remaining <= 0:
            return None
        return min(remaining, self.max_delay, self.first_delay * 2 ** attempt)


current = CredentialsWait()


def set_wait(seconds: float) -> None:
    """Wait up to `seconds`, counted from the next S3 call, for usable credentials."""
    global current
    current = CredentialsWait(seconds)


def retrying(on_retry: Callable[[], None]) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """A decorator: retry a storage function while credentials are not ready, within the window
    of `current`; `on_retry` runs before each retry (a new client looks for credentials again)."""

    def decorator(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            wait = current
            wait.start()
            attempt = 0
            while True:
                try:
                    return function(*args, **kwargs)
                except CredentialsNotReady as exc:
                    delay = wait.delay(attempt)
                    if delay is None:
                        # A plain RetryableError: a storage function calling another one must
                        # not wait again, the window is the process's.
                        raise RetryableError(
                            f"{exc.message}; credentials are waited for during the first "
                            f"{wait.seconds:g}s (--storage-credentials-wait-seconds)") from None
                    log.warning("%s; retrying in %.1fs", exc.message, delay)
                    wait.sleep(delay)
                    on_retry()
                    attempt += 1

        return wrapper

    return decorator
