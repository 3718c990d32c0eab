"""A lease on an output prefix, so that two pods cannot both train and publish into it (a Job's pod
restarted while the old one still runs on a partitioned node, or a duplicate submission).

The lease is one small object, `<output>/.lease.json`, holding the holder's id, its Job's UID and
completion index, and an expiry. It is taken with an S3 conditional create (If-None-Match: *) and
renewed or taken over with a conditional replace (If-Match: <ETag>), so two writers can never both
believe they hold it. A heartbeat thread renews it every third of its TTL, however long a phase
takes; a holder that finds its lease gone or changed stops before publishing.

Who may take a held lease:
- the same Job (same UID, same completion index) at once: the holder was this Job's previous pod,
  killed (OOMKill, kill -9) before it could release, and `podReplacementPolicy: Failed` means
  Kubernetes starts a replacement only once that pod has ended;
- anyone once it expired; another Job's live lease is waited for, polling, up to `wait_seconds`,
  then the job exits 75 (retryable).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping

from dreambooth_job.config.operator_policy import ALLOW_UNCONDITIONAL_STORE_ENV, OperatorPolicy
from dreambooth_job.config.pod_env import JOB_UID_ENV
from dreambooth_job.exit_codes import InvalidInputError, RetryableError
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client

log = logging.getLogger(__name__)

LEASE_FILE = ".lease.json"
DEFAULT_TTL_SECONDS = 600.0
# While another Job holds the lease: how often to look again (sooner if it expires before).
POLL_SECONDS = 15.0
# The pod's Job UID (the chart and build_job set it from the batch.kubernetes.io/controller-uid
# label) and, in an Indexed Job whose pods share one UID, the index Kubernetes sets.
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"


def holder_id() -> str:
    """Pod name (the hostname in Kubernetes), process id and a random suffix."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def pod_identity(env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The `job_uid` and `completion_index` of this pod's Job; None outside Kubernetes."""
    env = os.environ if env is None else env
    return {"job_uid": env.get(JOB_UID_ENV) or None,
            "completion_index": env.get(COMPLETION_INDEX_ENV) or None}


class Lease:
    def __init__(self, output_uri: str, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 clock: Callable[[], float] = time.time, *,
                 job_uid: str | None = None, completion_index: str | None = None,
                 wait_seconds: float = 0.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.uri = storage.join(output_uri, LEASE_FILE)
        self.ttl = ttl_seconds
        self.holder = holder_id()
        self.job_uid, self.completion_index = job_uid, completion_index
        self.wait_seconds = wait_seconds
        self.clock, self.sleep = clock, sleep
        self.etag: str | None = None
        self.renewed_at = 0.0
        self.lost: str | None = None  # why the lease was lost, once it was
        # The heartbeat and the main thread both renew: one conditional write at a time, or the
        # second would find the first's new ETag and think the lease lost.
        self._lock = threading.Lock()
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.etag is not None

    def _body(self) -> bytes:
        now = self.clock()
        return json.dumps({"holder": self.holder, "job_uid": self.job_uid,
                           "completion_index": self.completion_index,
                           "expires_at": now + self.ttl, "renewed_at": now}).encode()

    def _same_job(self, current: dict) -> bool:
        return (self.job_uid is not None and current.get("job_uid") == self.job_uid
                and current.get("completion_index") == self.completion_index)

    def acquire(self) -> None:
        """Take the lease: create it, take over an expired one or one of this same Job's, or wait
        up to `wait_seconds` for another Job's; RetryableError when that one still holds it."""
        deadline = self.clock() + self.wait_seconds
        while True:
            try:
                self.etag = storage.write_conditional(self.uri, self._body())
                break
            except s3_client.PreconditionFailed:
                pass
            try:
                body, etag = storage.read_with_etag(self.uri)
            except FileNotFoundError:
                continue  # released just now: create it again
            current = _holder_record(body)
            left = current["expires_at"] - self.clock()
            if self._same_job(current) or left <= 0:
                why = "this Job's previous pod" if self._same_job(current) else "an expired holder"
                log.warning("taking over the lease %s from %s (%s)", self.uri, current.get("holder"), why)
                try:
                    self.etag = storage.write_conditional(self.uri, self._body(), if_match=etag)
                    break
                except (s3_client.PreconditionFailed, FileNotFoundError):
                    left = 0.0  # someone else changed it first: look again, within the deadline
            if self.clock() >= deadline:
                raise RetryableError(
                    f"another run ({current.get('holder')}, Job {current.get('job_uid')}) holds the "
                    f"lease on {self.uri} for {max(left, 0):.0f}s more (waited {self.wait_seconds:g}s)")
            if left > 0:
                log.info("another run (%s) holds the lease %s; waiting", current.get("holder"), self.uri)
                self.sleep(min(POLL_SECONDS, deadline - self.clock(), left))
        self.renewed_at = self.clock()
        self.lost = None

    def renew(self, *, force: bool = False) -> None:
        """Extend the lease (cheaply skipped unless a third of the TTL passed); RetryableError if
        it was lost, here or by the heartbeat, so that the caller stops before writing anything more."""
        with self._lock:
            if self.lost:
                raise RetryableError(self.lost)
            if self.etag is None or (not force and self.clock() - self.renewed_at < self.ttl / 3):
                return
            try:
                self.etag = storage.write_conditional(self.uri, self._body(), if_match=self.etag)
            except (s3_client.PreconditionFailed, FileNotFoundError):
                self.etag = None
                self.lost = f"lost the lease on {self.uri} to another run; stopping"
                raise RetryableError(self.lost) from None
            self.renewed_at = self.clock()

    def start_heartbeat(self, wait: Callable[[float], bool] | None = None) -> None:
        """Renew every third of the TTL in a daemon thread until release(). `wait(seconds)` returns
        True to stop: the stop event's wait, or in tests one driven by a fake clock."""
        wait = wait or self._stop_heartbeat.wait
        self._stop_heartbeat.clear()
        self._heartbeat = threading.Thread(target=self._beat, args=(wait,), name="lease-heartbeat",
                                           daemon=True)
        self._heartbeat.start()

    def _beat(self, wait: Callable[[float], bool]) -> None:
        while not wait(self.ttl / 3):
            try:
                self.renew(force=True)
            except RetryableError as exc:
                if self.lost:
                    log.error("%s (at the next step or phase end)", exc.message)
                    return
                log.warning("could not renew the lease %s, trying again: %s", self.uri, exc.message)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; expiry is far
                log.warning("could not renew the lease %s, trying again: %s", self.uri, exc)

    def stop_heartbeat(self) -> None:
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None

    def release(self) -> None:
        self.stop_heartbeat()
        if self.etag is None:
            return
        try:
            _, etag = storage.read_with_etag(self.uri)
            if etag == self.etag:
                storage.delete(self.uri)
        except Exception as exc:  # noqa: BLE001 - best effort: the expiry frees it anyway
            log.warning("could not release the lease %s: %s", self.uri, exc)
        self.etag = None


@contextlib.contextmanager
def holding(lease: Lease) -> Iterator[Lease]:
    """Hold `lease` within this block: acquired (RetryableError when another run holds it), renewed
    by the heartbeat however long a phase takes, released at the end whatever happened."""
    try:
        lease.acquire()
        lease.start_heartbeat()
        yield lease
    finally:
        lease.release()


def _holder_record(body: bytes) -> dict:
    """The lease object's record; one that is not a record (anyone able to write the prefix can
    write it) counts as expired, so that it can be taken over rather than block every run."""
    try:
        record = json.loads(body)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        record = {}
    expires_at = record.get("expires_at")
    valid = (isinstance(expires_at, int | float) and not isinstance(expires_at, bool)
             and math.isfinite(expires_at))
    return {**record, "expires_at": expires_at if valid else 0.0}


def check_conditional_writes(output_uri: str, policy: OperatorPolicy) -> None:
    """Refuse (InvalidInputError) an object store that ignores If-None-Match: on it the lease
    cannot keep two runs out of one prefix, unless the operator allows such stores. Local
    directories lock, so only s3:// is probed: one object created twice, then deleted."""
    if not storage.is_s3(output_uri):
        return
    probe = storage.join(output_uri, f".conditional-write-probe-{uuid.uuid4().hex}")
    try:
        storage.write_conditional(probe, b"1")
        try:
            storage.write_conditional(probe, b"2")
        except s3_client.PreconditionFailed:
            return
    finally:
        storage.delete(probe)
    if policy.allow_store_without_conditional_writes:
        log.warning("the object store of %s ignores conditional writes (If-None-Match); %s is set, "
                    "so the lease cannot keep two runs out of this prefix", output_uri,
                    ALLOW_UNCONDITIONAL_STORE_ENV)
        return
    raise InvalidInputError(
        f"the object store of {output_uri} does not enforce conditional writes (If-None-Match), so "
        f"two runs could publish into one prefix; use a store that does, or set "
        f"{ALLOW_UNCONDITIONAL_STORE_ENV}=true to run without that protection")
