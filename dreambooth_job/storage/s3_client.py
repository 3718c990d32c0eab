"""The job's S3 client: one boto3 client per process, the translation of botocore's failures into
the job's errors, and the observer that counts transfers and retries. storage/places.py's operations are
the only users; everything else goes through them.

    with translate_errors(uri):              # botocore's failures -> the job's errors, naming uri
        s3_client().head_object(Bucket=bucket, Key=key)

- The client honours AWS_ENDPOINT_URL(_S3), AWS_REGION, AWS_MAX_ATTEMPTS and AWS_RETRY_MODE, and is
  rebuilt when they or the identity change (rotated keys, IRSA's token). Retries are botocore's
  (standard mode, backoff with jitter); each one is logged and counted (`storage_retry`).
- `translate_errors`: missing or refused credentials become CredentialsNotReady (waited for at
  start-up by storage/s3_credentials.py, then RetryableError), a missing object FileNotFoundError, a failed
  condition PreconditionFailed, access denied or a missing bucket InvalidInputError (2), a 5xx,
  throttling or an unreachable endpoint RetryableError (75).
"""

from __future__ import annotations

import logging
import os
import threading
from types import TracebackType
from typing import Any, Self

from dreambooth_job.events import JobObserver
from dreambooth_job.exit_codes import InvalidInputError, RetryableError
from dreambooth_job.storage.s3_credentials import CREDENTIAL_ERROR_CODES, CredentialsNotReady

MAX_ATTEMPTS = 8
TRANSFER_THREADS = 8
"""Concurrent transfers of one download_dir/upload_dir; the client's pool holds twice as many."""

log = logging.getLogger(__name__)

_observer: JobObserver = JobObserver()
_client_lock = threading.Lock()
_client: Any = None  # a botocore S3 client; boto3 ships no types
_client_env: tuple[str | None, ...] = ()
_probe: Any = None  # probe_client's
_probe_env: tuple[str | None, ...] = ()
PROBE_TIMEOUT_SECONDS = 3
# The environment a client is bound to: a change (another endpoint or identity) needs a new client.
_CLIENT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE",
                    "AWS_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
                    "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION")


class PreconditionFailed(Exception):
    """A conditional write found the object in another state than the caller expected."""


def set_observer(new_observer: JobObserver) -> None:
    """Report transfers and retries of this process to `observer` (metrics)."""
    global _observer
    _observer = new_observer


def observer() -> JobObserver:
    """Where this process reports transfers and retries."""
    return _observer


def client_env() -> tuple[str | None, ...]:
    """The environment a client is bound to (the store and the identity)."""
    return tuple(os.environ.get(name) for name in _CLIENT_ENV_VARS)


def s3_client() -> Any:
    """The process-wide boto3 S3 client (thread-safe once created), rebuilt if the environment
    that configures it changed. (Any: boto3 ships no types.)"""
    global _client, _client_env
    with _client_lock:
        env = client_env()
        if _client is None or env != _client_env:
            _client_env = env
            attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", MAX_ATTEMPTS))
            _client = _new_client(attempts=attempts, connect_timeout=10, read_timeout=60,
                                  max_pool_connections=TRANSFER_THREADS * 2)
            _client.meta.events.register("needs-retry.s3", _count_retry)
        return _client


def probe_client() -> Any:
    """A process-wide client for a glance at a small object before any job runs (sizing a Job
    at `submit`, storage/s3_probe.py): one attempt, PROBE_TIMEOUT_SECONDS to connect and to read,
    rebuilt like `s3_client` when the environment changes."""
    global _probe, _probe_env
    with _client_lock:
        env = client_env()
        if _probe is None or env != _probe_env:
            _probe_env = env
            _probe = _new_client(attempts=1, connect_timeout=PROBE_TIMEOUT_SECONDS,
                                 read_timeout=PROBE_TIMEOUT_SECONDS, max_pool_connections=2)
        return _probe


def _new_client(*, attempts: int, connect_timeout: float, read_timeout: float,
                max_pool_connections: int) -> Any:
    import boto3  # deferred: boto3 is heavy
    from botocore.config import Config  # deferred: botocore is heavy

    # A new session, not boto3's default one: that one keeps the credentials it found
    # first, and a rebuilt client must look for them again (rotated keys, IRSA's token).
    return boto3.session.Session().client("s3", config=Config(
        retries={"mode": os.environ.get("AWS_RETRY_MODE", "standard"), "max_attempts": attempts},
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"} if _endpoint_is_custom() else {}))


def reset_client() -> None:
    """Forget the cached client, e.g. after the environment's endpoint or credentials changed."""
    global _client, _probe
    with _client_lock:
        _client = _probe = None


def _endpoint_is_custom() -> bool:
    return bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))


def _count_retry(attempts: int | None = None, response: tuple[Any, dict[str, Any]] | None = None,
                 caught_exception: Exception | None = None, **_: Any) -> None:
    if caught_exception is not None:
        reason: object = caught_exception
    elif response is not None and response[1].get("ResponseMetadata", {}).get("HTTPStatusCode", 200) >= 500:
        reason = response[1].get("Error", {}).get("Code")
    else:
        return
    log.warning("S3 request failed (attempt %s): %s; retrying", attempts, reason)
    _observer.storage_retry()


class translate_errors:
    """Map botocore failures to the job's error types, naming the URI."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            return
        from botocore.exceptions import (  # deferred: botocore is heavy
            BotoCoreError,
            ClientError,
            CredentialRetrievalError,
            FlexibleChecksumError,
            NoCredentialsError,
        )

        if isinstance(exc, (NoCredentialsError, CredentialRetrievalError)):
            raise CredentialsNotReady(f"no usable S3 credentials for {self.uri} ({exc})") from None
        if isinstance(exc, OSError) and exc.filename and \
                exc.filename == os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
            # botocore reads IRSA's projected token lazily and lets a missing file through as is.
            raise CredentialsNotReady(f"no usable S3 credentials for {self.uri} "
                                      f"(no web identity token at {exc.filename})") from None
        if isinstance(exc, FlexibleChecksumError):
            raise RetryableError(f"download of {self.uri} does not match its checksum: {exc}") from None
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(self.uri) from None
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise PreconditionFailed(self.uri) from None
            if code == "NoSuchBucket":
                raise InvalidInputError(f"S3 bucket does not exist: {self.uri}") from None
            if code in CREDENTIAL_ERROR_CODES:
                raise CredentialsNotReady(f"S3 credentials not accepted ({code}) for {self.uri}") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise InvalidInputError(f"S3 access denied ({code}) for {self.uri}") from None
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling"):
                raise RetryableError(f"S3 unavailable ({code}) for {self.uri}") from None
            raise InvalidInputError(f"S3 error {code} for {self.uri}") from None
        if isinstance(exc, BotoCoreError):
            raise RetryableError(f"S3 unreachable for {self.uri}: {exc}") from None
