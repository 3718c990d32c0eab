"""One interface to the places the job reads and writes: `s3://bucket/prefix` URIs and local paths.

Every phase talks to storage only through these functions. S3 goes through boto3's standard
credential chain; boto3 itself honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and AWS_REGION, so
the same code runs against AWS, MinIO or SeaweedFS. Retries are botocore's (standard mode with
backoff and jitter), not ours. Large files go up as multipart uploads through boto3's transfer
manager.

Integrity: uploads carry a CRC32 checksum and downloads are verified against the checksum stored
with the object (storage/checksums.py) and its size, not against its ETag (not an MD5 in SSE-KMS or SSE-C
buckets). Credentials: at start-up (IRSA / pod identity not ready yet) missing or expired
credentials are waited for, for a bounded time (storage/s3_credentials.py), then end the job as retryable.

This module holds the operations (list, read, write, delete, download, upload); the S3 client,
its retries and the translation of botocore's errors into the job's are in storage/s3_client.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dreambooth_job.exit_codes import InvalidInputError, RetryableError
from dreambooth_job.storage import checksums, s3_credentials
from dreambooth_job.storage.object_keys import UnsafeKeyError, check_listing, display_key
from dreambooth_job.storage.s3_client import (
    TRANSFER_THREADS,
    PreconditionFailed,
    observer,
    reset_client,
    s3_client,
    translate_errors,
)

if TYPE_CHECKING:  # boto3 is imported when the first transfer needs it
    from boto3.s3.transfer import TransferConfig

MULTIPART_THRESHOLD = 16 * 1024 * 1024


class TransferCancelled(Exception):
    """An upload given up by its caller (checkpoint.BackgroundUploads.abandon): it stops at its next
    chunk, and a multipart upload is aborted by boto3's transfer manager."""


def _progress(cancel: threading.Event | None, uri: str, sent: int) -> None:
    """boto3's progress callback of a cancellable upload: raising stops the transfer."""
    _check_cancel(cancel, uri)


def _check_cancel(cancel: threading.Event | None, uri: str) -> None:
    if cancel is not None and cancel.is_set():
        raise TransferCancelled(f"upload of {uri} cancelled")


@dataclass(frozen=True)
class StoredFile:
    """A file under a prefix: its path relative to the prefix, size and ETag (S3) if known."""

    relative_path: str
    size: int
    etag: str | None = None
    key: str | None = None
    """The exact S3 key (or local path) listed: what a download fetches, never re-joined."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise InvalidInputError(f"not a valid S3 URI (no bucket): {uri}")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or local path with '/' (S3 keys never use os.sep)."""
    if not is_s3(uri):
        return str(Path(uri, *parts))
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


# Every public function that may call S3 waits, at start-up, for credentials that are not ready yet.
_waits_for_credentials = s3_credentials.retrying(on_retry=reset_client)
set_credentials_wait = s3_credentials.set_wait


# ----------------------------------------------------------------------------------------------

@_waits_for_credentials
def list_files(uri: str, suffixes: Iterable[str] | None = None) -> list[StoredFile]:
    """Files under a prefix or directory, recursively, sorted by relative path."""
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    files: list[StoredFile] = []
    if is_s3(uri):
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        with translate_errors(uri):
            for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix):]
                    if rel and not rel.endswith("/"):  # a key ending in '/' is a folder marker
                        files.append(StoredFile(rel, obj["Size"], obj.get("ETag", "").strip('"'),
                                                obj["Key"]))
    else:
        files = _list_local(Path(uri))
    if wanted:
        files = [f for f in files if f.relative_path.lower().endswith(wanted)]
    return sorted(files, key=lambda f: f.relative_path)


def _list_local(root: Path) -> list[StoredFile]:
    """Files under a directory; symlinked directories are not descended (as rglob), symlinked
    files are listed and `download_dir` refuses those that leave the directory."""
    files = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            try:
                if path.is_file():
                    files.append(StoredFile(path.relative_to(root).as_posix(), path.stat().st_size,
                                            key=str(path)))
            except OSError:
                continue  # vanished or unreadable: nothing to copy
    return files


def file_uri(uri: str, file: StoredFile) -> str:
    """The URI of exactly the object `list_files(uri)` listed as `file`."""
    if file.key is None:
        return join(uri, file.relative_path)
    return f"s3://{split_s3(uri)[0]}/{file.key}" if is_s3(uri) else file.key


@_waits_for_credentials
def exists(uri: str) -> bool:
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = split_s3(uri)
    try:
        with translate_errors(uri):
            s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except FileNotFoundError:
        return False


@_waits_for_credentials
def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole object; FileNotFoundError when it does not exist. With `max_bytes`, at most
    max_bytes + 1 bytes are read: a result longer than max_bytes means a larger object, which a
    caller reading a tenant's file refuses without holding it all in memory."""
    limit = -1 if max_bytes is None else max_bytes + 1
    if not is_s3(uri):
        with open(uri, "rb") as file:
            return file.read(limit)
    bucket, key = split_s3(uri)
    with translate_errors(uri):
        stream = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
        body = stream.read() if max_bytes is None else stream.read(limit)
        stream.close()
    observer().transfer(direction="download", num_bytes=len(body), objects=1)
    return body


@_waits_for_credentials
def write_bytes(uri: str, data: bytes, content_type: str | None = None) -> None:
    """Write one object or file whole: a reader sees the old content or the new, never a part.
    `content_type` sets the object's Content-Type (a page served from the bucket renders)."""
    if not is_s3(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    bucket, key = split_s3(uri)
    with translate_errors(uri):
        s3_client().put_object(Bucket=bucket, Key=key, Body=data, **_upload_checksum(),
                               **({"ContentType": content_type} if content_type else {}))
    observer().transfer(direction="upload", num_bytes=len(data), objects=1)


@_waits_for_credentials
def read_with_etag(uri: str) -> tuple[bytes, str]:
    """The object and its ETag (for local files: the MD5 of the content, as S3 computes it)."""
    if not is_s3(uri):
        data = Path(uri).read_bytes()
        return data, hashlib.md5(data).hexdigest()
    bucket, key = split_s3(uri)
    with translate_errors(uri):
        response = s3_client().get_object(Bucket=bucket, Key=key)
        return response["Body"].read(), response["ETag"].strip('"')


@_waits_for_credentials
def write_conditional(uri: str, data: bytes, *, if_match: str | None = None) -> str:
    """Create `uri` only if absent (if_match None) or replace it only if its ETag is `if_match`.

    S3 conditional writes (If-None-Match / If-Match) make this atomic across pods; local files use
    an exclusive lock. Raises PreconditionFailed when the condition does not hold; returns the ETag.
    """
    if not is_s3(uri):
        return _write_conditional_local(Path(uri), data, if_match)
    bucket, key = split_s3(uri)
    condition = {"IfMatch": f'"{if_match}"'} if if_match else {"IfNoneMatch": "*"}
    with translate_errors(uri):
        response = s3_client().put_object(Bucket=bucket, Key=key, Body=data, **condition,
                                          **_upload_checksum())
    return response["ETag"].strip('"')


def _write_conditional_local(path: Path, data: bytes, if_match: str | None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = hashlib.md5(path.read_bytes()).hexdigest() if path.exists() else None
        if current != if_match:
            raise PreconditionFailed(str(path))
        write_bytes(str(path), data)
    return hashlib.md5(data).hexdigest()


@_waits_for_credentials
def delete(uri: str) -> None:
    """Delete one object or file, or a whole prefix/directory when `uri` ends with '/'."""
    if not is_s3(uri):
        path = Path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return
    bucket, key = split_s3(uri)
    keys = [f.key for f in list_files(uri)] if uri.endswith("/") else [key]
    with translate_errors(uri):
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            if batch:
                s3_client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


@_waits_for_credentials
def download_file(uri: str, local_path: Path, expected: StoredFile | None = None) -> Path:
    """Copy one file to `local_path`, verified by size and, for S3, by its stored checksum.

    `expected` (a listing's entry) adds its size to the check. A download that does not verify is
    removed and raises RetryableError."""
    local_path.parent.mkdir(parents=True, exist_ok=True)
    if not is_s3(uri):
        shutil.copyfile(uri, local_path)
        _check_size(uri, local_path, expected.size if expected else None)
        return local_path
    bucket, key = split_s3(uri)
    with translate_errors(uri):
        head = s3_client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        s3_client().download_file(bucket, key, str(local_path), Config=_transfer_config())
    _check_size(uri, local_path, head["ContentLength"])
    if expected is not None:
        _check_size(uri, local_path, expected.size)
    try:
        checksums.verify(uri, local_path, head, lambda: _part_sizes(bucket, key))
    except RetryableError:
        local_path.unlink()
        raise
    observer().transfer(direction="download", num_bytes=local_path.stat().st_size, objects=1)
    return local_path


def _check_size(uri: str, local_path: Path, wanted: int | None) -> None:
    size = local_path.stat().st_size
    if wanted is not None and size != wanted:
        local_path.unlink()
        raise RetryableError(f"download of {uri} has {size} bytes, not the {wanted} expected "
                             "(truncated, or the object changed)")


def download_dir(uri: str, local_dir: Path, suffixes: Iterable[str] | None = None,
                 on_unsafe_key: Callable[[StoredFile, str], None] | None = None) -> list[Path]:
    """Copy every file under a prefix into `local_dir`, concurrently; returns the local paths.

    Each key is checked before anything is written (storage/object_keys.py): a key that cannot be a
    path inside `local_dir` raises UnsafeKeyError naming it, or, given `on_unsafe_key`, is passed
    to it with the reason and skipped. Each download GETs exactly the key that was listed.
    """
    return download_listed(uri, list_files(uri, suffixes), local_dir, on_unsafe_key)


def download_listed(uri: str, files: list[StoredFile], local_dir: Path,
                    on_unsafe_key: Callable[[StoredFile, str], None] | None = None) -> list[Path]:
    """`download_dir` for files already listed by `list_files(uri)`: each is verified against
    that listing (size) and its stored checksum, so what lands is what the listing described."""
    unsafe = _check_listing(uri, files, local_dir)
    for file, reason in unsafe.items():
        if on_unsafe_key is None:
            raise UnsafeKeyError(_refusal(uri, file, reason))
        on_unsafe_key(file, reason)
    files = [f for f in files if f not in unsafe]
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        return list(pool.map(
            lambda f: download_file(file_uri(uri, f), local_dir / f.relative_path, f), files))


def require_safe(uri: str, files: list[StoredFile], local_dir: Path) -> None:
    """Raise UnsafeKeyError naming the first file of a listing of `uri` that cannot be copied
    under `local_dir` (object_keys.check_listing)."""
    for file, reason in _check_listing(uri, files, local_dir).items():
        raise UnsafeKeyError(_refusal(uri, file, reason))


def _check_listing(uri: str, files: list[StoredFile], local_dir: Path) -> dict[StoredFile, str]:
    return check_listing(files, local_dir, source_root=None if is_s3(uri) else Path(uri))


def _refusal(uri: str, file: StoredFile, reason: str) -> str:
    return f"refusing {display_key(file_uri(uri, file))}: it {reason}"


def _part_sizes(bucket: str, key: str) -> list[int]:
    """The sizes of a multipart object's parts, as GetObjectAttributes lists them (or does not)."""
    sizes: list[int] = []
    marker = 0
    while True:
        parts = s3_client().get_object_attributes(
            Bucket=bucket, Key=key, ObjectAttributes=["ObjectParts"], MaxParts=1000,
            PartNumberMarker=marker).get("ObjectParts", {})
        sizes += [part["Size"] for part in parts.get("Parts", [])]
        if not parts.get("IsTruncated"):
            return sizes
        marker = parts["NextPartNumberMarker"]


def _upload_checksum() -> dict:
    """Have botocore send a CRC32 with every upload (S3 stores it with the object, whatever the
    encryption) unless the environment opted out for a store without flexible checksums."""
    if os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION", "").lower() == "when_required":
        return {}
    return {"ChecksumAlgorithm": "CRC32"}


@_waits_for_credentials
def upload_file(local_path: Path, uri: str, cancel: threading.Event | None = None) -> None:
    """Upload one file; `cancel`, a threading.Event, stops it (TransferCancelled) once set."""
    _check_cancel(cancel, uri)
    if not is_s3(uri):
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, target)
        return
    bucket, key = split_s3(uri)
    with translate_errors(uri):
        s3_client().upload_file(str(local_path), bucket, key, Config=_transfer_config(),
                                ExtraArgs=_upload_checksum(),
                                # Called as chunks go out: the chunk in flight is the most a
                                # cancelled upload still sends.
                                Callback=(lambda sent: _progress(cancel, uri, sent)) if cancel else None)
    observer().transfer(direction="upload", num_bytes=local_path.stat().st_size, objects=1)


def upload_dir(local_dir: Path, uri: str, cancel: threading.Event | None = None) -> list[str]:
    """Copy every file under `local_dir` to the prefix, concurrently; returns the URIs written.
    `cancel` (a threading.Event) stops every file's upload once set (TransferCancelled)."""
    paths = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    targets = [join(uri, p.relative_to(local_dir).as_posix()) for p in paths]
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        list(pool.map(lambda path, target: upload_file(path, target, cancel), paths, targets))
    return targets


def _transfer_config() -> TransferConfig:
    from boto3.s3.transfer import TransferConfig  # deferred: boto3 is heavy

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                          multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=4)
