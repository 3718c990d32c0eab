"""The completion call: one signed POST to `--notify-url` when the run's outcome is final.

    dreambooth-job train ... --notify-url https://hooks.example/dreambooth \\
        --notify-secret-env NOTIFY_SECRET        # the key, from a Secret through the environment

Final means success, or a failure the Job's podFailurePolicy does not retry (exit 2): a pod that
exits 75, 143 or 1 may be followed by another attempt, so it cannot know that it is the last and
calls nobody. The body (JSON, UTF-8) names the run and where its record is; it never holds a
credential or a presigned URL (every string is redacted like result.json):

    {"event": "dreambooth.run.finished", "status": "succeeded", "exit_code": 0,
     "job_id": "dog-1a2b3c4d", "subject_id": "dog", "batch_id": null,
     "output": "s3://runs/dog/", "result": "s3://runs/dog/result.json", "error": null,
     "finished_at": "2026-11-30T08:00:00+00:00"}

Headers: `X-DreamBooth-Delivery` (one id per run, the same on every attempt: deduplicate on it),
`X-DreamBooth-Timestamp` (Unix seconds of the attempt) and, with a key,
`X-DreamBooth-Signature: sha256=<hex HMAC-SHA256(key, timestamp + "." + body)>` (how to verify:
docs/user-guide.md, "Completion call"). Redirects are not followed (they could lead to a host the
operator does not allow).
Without an allow-list naming the host or the operator's ALLOW_PRIVATE_NOTIFY, the receiver must be
a public address: an internal one (loopback, link-local where cloud metadata answers, private, ...)
is exit 2 at validation and at the pod's start, and refused at the call's own lookup
(config/outbound.py).

A receiver that is down, slow or answers 5xx/429 is retried within a bounded time, then given up
on: the failure is logged and counted (dreambooth_notify_failures_total), never the run's outcome.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dreambooth_job.config import outbound
from dreambooth_job.config.operator_policy import ENV_PREFIX, OperatorPolicy
from dreambooth_job.exit_codes import NOT_RETRYABLE, ExitCode, InvalidInputError
from dreambooth_job.outputs.result import RESULT_FILE, now_iso
from dreambooth_job.redaction import redact_value
from dreambooth_job.storage import places as storage

if TYPE_CHECKING:
    from dreambooth_job.config.train_config import TrainConfig
    from dreambooth_job.events import JobObserver

log = logging.getLogger("dreambooth_job.outputs.notify")

EVENT = "dreambooth.run.finished"
SIGNATURE_HEADER = "X-DreamBooth-Signature"
TIMESTAMP_HEADER = "X-DreamBooth-Timestamp"
DELIVERY_HEADER = "X-DreamBooth-Delivery"
ATTEMPTS = 3
ATTEMPT_TIMEOUT_SECONDS = 10.0
TOTAL_SECONDS = 30.0
"""The call's whole budget, backoff included: it delays the pod's exit by at most this much."""
BACKOFF_SECONDS = (1.0, 2.0)
DEFAULT_PORTS = {"http": 80, "https": 443}
# Outbound URL options the pod checks against the operator's hosts before any request leaves.
URL_OPTIONS = ("pushgateway", "notify_url")


def is_final(exit_code: int) -> bool:
    """Whether no other attempt of this run follows an exit with `exit_code` (podFailurePolicy)."""
    return exit_code == ExitCode.OK or exit_code in NOT_RETRYABLE


def check_destinations(config: TrainConfig, policy: OperatorPolicy) -> None:
    """Exit 2 before any request leaves the pod when an outbound URL names a host the operator
    does not allow (DREAMBOOTH_OPERATOR_ALLOWED_HOSTS, set by the chart's operator values), or
    --notify-url an internal address the operator has not allowed (resolved now: a name that does
    not resolve yet is left to the call, which resolves and checks again)."""
    for name in URL_OPTIONS:
        url = getattr(config, name)
        if url and not policy.allows_host(url if "://" in url else "http://" + url):
            raise InvalidInputError(f"--{name.replace('_', '-')} names a host the operator does "
                                    f"not allow ({ENV_PREFIX}ALLOWED_HOSTS)")
    if not config.notify_url or outbound.internal_allowed(policy):
        return
    parts = urlsplit(config.notify_url)
    try:
        problem = outbound.check_literal(config.notify_url)
        if problem is None:
            outbound.checked_addresses(parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme])
    except outbound.InternalAddressError as exc:
        problem = str(exc)
    except (OSError, ValueError):  # not resolvable yet, or a port urllib will refuse itself
        return
    if problem:
        raise InvalidInputError(f"--notify-url names an internal address: {problem}; "
                                f"{outbound.ALLOWANCE}")


@dataclass
class Notifier:
    url: str
    secret: bytes | None = field(default=None, repr=False)
    delivery: str = field(default_factory=lambda: uuid.uuid4().hex)
    public_only: bool = True
    """Connect to public addresses only (config/outbound.py), each checked at the call's own lookup."""
    attempts: int = ATTEMPTS
    total_seconds: float = TOTAL_SECONDS
    backoff: tuple[float, ...] = BACKOFF_SECONDS

    @classmethod
    def for_run(cls, config: TrainConfig, env: Mapping[str, str]) -> Notifier | None:
        """The run's notifier (None without --notify-url); exit 2 when the key's variable is
        empty, at the start rather than after hours of training. `env` also holds the operator's
        policy: whether the receiver may be an internal address."""
        if not config.notify_url:
            return None
        secret = None
        if config.notify_secret_env:
            value = env.get(config.notify_secret_env, "")
            if not value:
                raise InvalidInputError(
                    f"--notify-secret-env {config.notify_secret_env}: the variable is not set or "
                    "empty (pass the key from a Secret through the environment)")
            secret = value.encode()
        return cls(config.notify_url, secret,
                   public_only=not outbound.internal_allowed(OperatorPolicy.from_env(env)))

    def headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: self.delivery,
                   TIMESTAMP_HEADER: str(timestamp), "User-Agent": "dreambooth-job"}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = "sha256=" + sign(self.secret, timestamp, body)
        return headers

    def send(self, payload: Mapping) -> bool:
        """POST `payload`, retrying within the budget; True once a receiver answered 2xx."""
        body = json.dumps(payload, sort_keys=True).encode()
        deadline = time.monotonic() + self.total_seconds
        problem = "no attempt made"
        for attempt in range(self.attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            request = urllib.request.Request(
                self.url, data=body, method="POST", headers=self.headers(body, int(time.time())))
            opener = _PUBLIC_OPENER if self.public_only else _OPENER
            status, problem = _post(opener, request, min(ATTEMPT_TIMEOUT_SECONDS, remaining))
            if status is not None and 200 <= status < 300:
                return True
            if status is not None and status not in (408, 429) and status < 500:
                break  # the receiver refused this body: another attempt gets the same answer
            if attempt + 1 < self.attempts:
                time.sleep(min(self.backoff[min(attempt, len(self.backoff) - 1)],
                               max(0.0, deadline - time.monotonic())))
        log.warning("completion call failed after %d attempt(s): %s", attempt + 1, problem)
        return False


def announce(notifier: Notifier | None, observer: JobObserver, config: TrainConfig,
             exit_code: int, error: str | None = None, *, result_written: bool = True) -> None:
    """Call the receiver when the outcome is final; a failed call is counted, never raised."""
    if notifier is None or not is_final(exit_code):
        return
    try:
        delivered = notifier.send(payload(config, exit_code, error, result_written))
    except Exception:  # noqa: BLE001 - the run's outcome stands whatever the call does
        log.warning("completion call failed", exc_info=True)
        delivered = False
    if not delivered:
        observer.notify_failed()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `timestamp.body`: the timestamp is signed, so a replay shows its age."""
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def payload(config: TrainConfig, exit_code: int, error: str | None, result_written: bool) -> dict:
    """What the receiver learns: the outcome, the run's ids and where its record is."""
    output = config.output or ""
    return redact_value({
        "event": EVENT, "status": "succeeded" if exit_code == ExitCode.OK else "failed",
        "exit_code": int(exit_code), "job_id": config.job_id, "subject_id": config.subject_id,
        "batch_id": config.batch_id, "output": output,
        "result": storage.join(output, RESULT_FILE) if result_written else None,
        "error": error, "finished_at": now_iso()})


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 3xx stays an answer: it never sends the body to another host


_OPENER = urllib.request.build_opener(_NoRedirects)
_PUBLIC_OPENER = outbound.public_opener(_NoRedirects)


def _post(opener: urllib.request.OpenerDirector, request: urllib.request.Request,
          timeout: float) -> tuple[int | None, str]:
    """(HTTP status or None, what went wrong), within `timeout` seconds in all: the socket
    timeout bounds each read, the thread's join bounds a receiver that trickles its answer."""
    outcome: list[tuple[int | None, str]] = []

    def attempt() -> None:
        try:
            with opener.open(request, timeout=timeout) as response:
                outcome.append((response.status, f"HTTP {response.status}"))
        except urllib.error.HTTPError as exc:
            outcome.append((exc.code, f"HTTP {exc.code}"))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            outcome.append((None, str(getattr(exc, "reason", exc))))

    worker = threading.Thread(target=attempt, name="notify", daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else (None, f"no answer within {timeout:.0f} s")
