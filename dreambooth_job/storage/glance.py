"""A glance at a small file before any job runs: what `submit` and `batch` read to size a Job
(training/sized_model.py) from the base model's or the run's own files.

    data = read_small("s3://models/klein/model_index.json", max_bytes=64 * 1024)  # None: unread

Unlike storage/places.py's reads it never waits: no credential wait, one attempt, short timeouts
(s3_client.probe_client), and any failure (no credentials, no server, no object, a larger
object than `max_bytes`) is None, logged at info with its reason: the caller falls back to what
it does without the file. A store that is unreachable or refuses the identity is not asked again
by this process (while the environment names the same store and identity): a `batch` of many
rows costs one timeout, not one a row.
"""

from __future__ import annotations

import logging

from dreambooth_job.exit_codes import InvalidInputError, RetryableError
from dreambooth_job.storage.places import is_s3, split_s3
from dreambooth_job.storage.s3_client import client_env, probe_client, translate_errors

log = logging.getLogger(__name__)

_unavailable: set[tuple[str | None, ...]] = set()
"""The stores (s3_client.client_env) that did not answer, or refused the identity, here."""


def read_small(uri: str, max_bytes: int) -> bytes | None:
    """The whole of `uri` (an s3:// object or a local file) when it is at most `max_bytes` and
    can be read at once; None otherwise."""
    store = client_env()
    if is_s3(uri) and store in _unavailable:
        log.debug("not read %s: its store did not answer earlier", uri)
        return None
    try:
        data = _read(uri, max_bytes + 1)
    except RetryableError as exc:  # unreachable, 5xx, or no credentials (CredentialsNotReady)
        _unavailable.add(store)
        log.info("not read %s, nor more from its store (%s)", uri, str(exc)[:200])
        return None
    # Any other failure is "not read" too (the caller has a fallback): a missing object or
    # file, access denied or no bucket (translate_errors), a bad URI.
    except (OSError, InvalidInputError, ValueError) as exc:
        log.info("not read %s (%s: %s)", uri, type(exc).__name__, str(exc)[:200])
        return None
    if len(data) > max_bytes:
        log.info("not read %s: over %d bytes", uri, max_bytes)
        return None
    return data


def _read(uri: str, limit: int) -> bytes:
    if not is_s3(uri):
        with open(uri, "rb") as file:
            return file.read(limit)
    bucket, key = split_s3(uri)
    with translate_errors(uri):
        stream = probe_client().get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return stream.read(limit)
        finally:
            stream.close()
