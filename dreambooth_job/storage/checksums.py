"""Integrity of downloaded S3 objects by S3's flexible checksums (CRC32, SHA-256, ...), not by ETag.

An ETag is the MD5 of the content only for single-part uploads to unencrypted buckets; with SSE-KMS
or SSE-C it is opaque. A checksum stored with the object (x-amz-checksum-*, sent at upload) is the
same whatever the encryption, so downloads are verified against it:

- full-object checksums (single-part uploads, FULL_OBJECT multipart uploads): the checksum of the
  whole file;
- composite checksums of multipart uploads ("<value>-<parts>"): the checksum of the parts'
  checksums concatenated, which needs the part sizes (GetObjectAttributes tells them).

botocore already checks full-object checksums of single, whole-object GETs; the transfer manager's
ranged GETs of large files come back without one, so storage/places.py verifies every download here.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from dreambooth_job.exit_codes import RetryableError

CHUNK_SIZE = 8 * 1024 * 1024
_PARTS_SUFFIX = re.compile(r"-(\d+)$")

log = logging.getLogger("dreambooth_job.storage.places")


@dataclass(frozen=True)
class StoredChecksum:
    """The checksum S3 keeps with an object, as HEAD (ChecksumMode=ENABLED) reports it."""

    algorithm: str
    """S3's name of the algorithm: CRC32, CRC32C, CRC64NVME, SHA1, SHA256."""
    value: str
    """Base64 of the digest (without a composite checksum's "-<parts>" suffix)."""
    parts: int | None = None
    """For a composite checksum, the number of parts it combines; None for a full-object one."""


def from_head(head: dict) -> StoredChecksum | None:
    """The checksum a head_object(ChecksumMode="ENABLED") answer reports, or None without one."""
    for key, raw in head.items():
        if not key.startswith("Checksum") or key == "ChecksumType" or not raw:
            continue
        value, parts = _split_parts(raw)
        checksum_type = head.get("ChecksumType")
        if parts is None and checksum_type != "FULL_OBJECT":
            # Some servers (and older S3 answers) leave the "-N" off a composite checksum and say
            # COMPOSITE only in ChecksumType, or not at all: a multipart ETag ("...-N") tells then.
            _, etag_parts = _split_parts(head.get("ETag", "").strip('"'))
            if checksum_type == "COMPOSITE" or etag_parts:
                parts = etag_parts
        return StoredChecksum(key[len("Checksum"):].upper(), value, parts)
    return None


def _split_parts(raw: str) -> tuple[str, int | None]:
    match = _PARTS_SUFFIX.search(raw)
    if not match:
        return raw, None
    return raw[:match.start()], int(match.group(1))


class _Checksum(Protocol):
    """botocore's checksum objects (httpchecksum.BaseChecksum)."""

    def update(self, chunk: bytes) -> None: ...

    def digest(self) -> bytes: ...

    def b64digest(self) -> str: ...


def supported(algorithm: str) -> bool:
    return _checksum_class(algorithm) is not None


def _checksum_class(algorithm: str) -> type[_Checksum] | None:
    """botocore's implementation of `algorithm` (CRC32C and CRC64NVME need awscrt), or None."""
    from botocore import httpchecksum  # deferred: botocore is heavy
    from botocore.compat import HAS_CRT  # deferred: botocore is heavy

    classes = {"CRC32": httpchecksum.Crc32Checksum, "SHA1": httpchecksum.Sha1Checksum,
               "SHA256": httpchecksum.Sha256Checksum}
    if HAS_CRT:
        classes.update(CRC32C=httpchecksum.CrtCrc32cChecksum,
                       CRC64NVME=getattr(httpchecksum, "CrtCrc64NvmeChecksum", None))
    return classes.get(algorithm)


def compute(path: Path, algorithm: str, part_sizes: Sequence[int] | None = None) -> str:
    """Base64 checksum of the file: of the whole file, or composite over parts of `part_sizes`."""
    checksum_class = _checksum_class(algorithm)
    if checksum_class is None:
        raise ValueError(f"no implementation of {algorithm} checksums")
    with open(path, "rb") as f:
        if part_sizes is None:
            return _digest_of(f, checksum_class(), None).b64digest()
        combined = checksum_class()
        for size in part_sizes:
            combined.update(_digest_of(f, checksum_class(), size).digest())
        return combined.b64digest()


def _digest_of(f: BinaryIO, checksum: _Checksum, size: int | None) -> _Checksum:
    """Feed `size` bytes of `f` (None: the rest) to `checksum`."""
    remaining = size
    while remaining is None or remaining > 0:
        chunk = f.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
        if not chunk:
            break
        checksum.update(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    return checksum


def verify(uri: str, path: Path, head: dict, part_sizes: Callable[[], list[int]]) -> None:
    """Raise RetryableError unless the download at `path` matches the checksum in `head` (S3's
    head_object answer with ChecksumMode=ENABLED). Without a usable checksum the size (checked by
    the caller) has to do, and the log says so once per process and reason.

    `part_sizes` lists a multipart object's part sizes, for a composite checksum."""
    stored = from_head(head)
    if stored is None:
        _say_once("none", f"{uri} has no S3 checksum (uploaded without one): downloads without "
                          "one are verified by their size only")
        return
    if not supported(stored.algorithm):
        _say_once(stored.algorithm, f"{uri} has a {stored.algorithm} checksum, which needs "
                                    "botocore[crt]: such downloads are verified by their size only")
        return
    sizes = None
    if stored.parts:
        sizes = _known_part_sizes(uri, stored.parts, path.stat().st_size, part_sizes)
        if sizes is None:
            return
    if compute(path, stored.algorithm, sizes) != stored.value:
        raise RetryableError(f"download of {uri} does not match its {stored.algorithm} checksum")


def _known_part_sizes(uri: str, count: int, size: int,
                      part_sizes: Callable[[], list[int]]) -> list[int] | None:
    from botocore.exceptions import BotoCoreError, ClientError  # deferred: botocore is heavy

    try:
        sizes = part_sizes()
        problem = "" if len(sizes) == count and sum(sizes) == size else "the store lists no parts"
    except (BotoCoreError, ClientError) as exc:
        problem = f"GetObjectAttributes failed: {exc}"
    if problem:
        _say_once("parts", f"cannot verify the composite checksum of {uri} ({problem}): multipart "
                           "downloads like it are verified by their size only")
        return None
    return sizes


_said: set[str] = set()
_said_lock = threading.Lock()


def _say_once(reason: str, message: str) -> None:
    with _said_lock:
        if reason in _said:
            return
        _said.add(reason)
    log.warning("%s", message)
