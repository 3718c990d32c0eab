"""A lease on an output prefix, so that two pods of the same job cannot both train and publish into
it (a Job's pod restarted while the old one still runs on a partitioned node, or a duplicate
submission).

The lease is one small object, `<output>/.lease.json`, holding the holder's id and an expiry. It is
taken with an S3 conditional create (If-None-Match: *) and renewed or taken over with a conditional
replace (If-Match: <ETag>), so two writers can never both believe they hold it. A holder that dies
simply lets it expire; a holder that finds its lease gone or changed stops before publishing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid

from dreambooth_job import storage
from dreambooth_job.exit_codes import RetryableError

log = logging.getLogger(__name__)

LEASE_FILE = ".lease.json"
DEFAULT_TTL_SECONDS = 600.0


def holder_id() -> str:
    """Pod name (the hostname in Kubernetes), process id and a random suffix."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(self, output_uri: str, ttl_seconds: float = DEFAULT_TTL_SECONDS, clock=time.time):
        self.uri = storage.join(output_uri, LEASE_FILE)
        self.ttl = ttl_seconds
        self.holder = holder_id()
        self.clock = clock
        self.etag: str | None = None
        self.renewed_at = 0.0

    @property
    def held(self) -> bool:
        return self.etag is not None

    def _body(self) -> bytes:
        now = self.clock()
        return json.dumps({"holder": self.holder, "expires_at": now + self.ttl,
                           "renewed_at": now}).encode()

    def acquire(self) -> None:
        """Take the lease, or take over an expired one; RetryableError while another holds it."""
        try:
            self.etag = storage.write_conditional(self.uri, self._body())
        except storage.PreconditionFailed:
            body, etag = storage.read_with_etag(self.uri)
            current = json.loads(body or b"{}")
            if current.get("expires_at", 0) > self.clock():
                raise RetryableError(
                    f"another run ({current.get('holder')}) holds the lease on {self.uri} for "
                    f"{current['expires_at'] - self.clock():.0f}s more") from None
            log.warning("taking over the expired lease of %s from %s", self.uri, current.get("holder"))
            try:
                self.etag = storage.write_conditional(self.uri, self._body(), if_match=etag)
            except storage.PreconditionFailed:
                raise RetryableError(f"another run took the lease on {self.uri} first") from None
        self.renewed_at = self.clock()

    def renew(self, *, force: bool = False) -> None:
        """Extend the lease (cheaply skipped unless a third of the TTL passed); RetryableError if
        it was lost, so that the caller stops before writing anything more."""
        if self.etag is None or (not force and self.clock() - self.renewed_at < self.ttl / 3):
            return
        try:
            self.etag = storage.write_conditional(self.uri, self._body(), if_match=self.etag)
        except (storage.PreconditionFailed, FileNotFoundError):
            self.etag = None
            raise RetryableError(f"lost the lease on {self.uri} to another run; stopping") from None
        self.renewed_at = self.clock()

    def release(self) -> None:
        if self.etag is None:
            return
        try:
            _, etag = storage.read_with_etag(self.uri)
            if etag == self.etag:
                storage.delete(self.uri)
        except Exception as exc:  # noqa: BLE001 - best effort: the expiry frees it anyway
            log.warning("could not release the lease %s: %s", self.uri, exc)
        self.etag = None
