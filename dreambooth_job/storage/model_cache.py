"""Copies of S3 model prefixes under `<cache-dir>`, shared by the jobs that mount the cache.

A copy is reused only when it verifies: its record (the marker file, written last) lists exactly
the source listing's paths, sizes and ETags, and the directory holds exactly those files with the
sizes and sha256 digests measured when they were downloaded. Anything else (a copy from an older
version with a bare marker, a file planted, changed or removed since) is downloaded again: a
marker alone says nothing about what sits beside it, and the next tenant would train on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dreambooth_job.exit_codes import RetryableError
from dreambooth_job.storage import object_keys
from dreambooth_job.storage import places as storage

log = logging.getLogger(__name__)

MARKER = ".download-complete"
HASH_THREADS = 4


def cached_copy(source: str, files: list[storage.StoredFile], local: Path) -> Path:
    """`local`, holding a verified copy of the prefix `source` whose fresh listing is `files`.

    Raises UnsafeKeyError (exit 2) naming a key that cannot be a path under `local`.
    """
    storage.require_safe(source, files, local)
    expected = [_listed(f) for f in files]
    problem = _verify(local, expected)
    if problem is None:
        return local
    if local.exists():
        log.warning("cached copy %s of %s is not reused (%s): downloading again", local, source, problem)
    else:
        log.info("downloading %s to %s", source, local)
    local.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the copy and swap it in: whatever sits at `local` is always complete, and
    # a job that dies mid-download leaves only a hidden staging directory.
    staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the copy from jobs running as another uid
        storage.download_listed(source, files, staging)  # the listing the fingerprint hashed
        record = {"source": source, "files": _measure(staging, expected)}
        storage.write_bytes(str(staging / MARKER), json.dumps(record, indent=1).encode())
        try:
            _replace_dir(staging, local)
        except OSError as exc:  # another job put its copy there first: fine if that one verifies
            if _verify(local, expected) is not None:
                raise RetryableError(f"cannot install the downloaded copy of {source} "
                                     f"at {local}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local


def _listed(file: storage.StoredFile) -> dict:
    return {"path": file.relative_path, "size": file.size, "etag": file.etag}


def _verify(local: Path, expected: list[dict]) -> str | None:
    """Why the copy in `local` cannot be reused for a listing `expected`, or None."""
    if local.is_symlink():
        return "it is a symlink"
    try:
        record = json.loads((local / MARKER).read_text())
        recorded = record["files"]
        listed = [{k: entry[k] for k in ("path", "size", "etag")} for entry in recorded]
    except FileNotFoundError:
        return "no completion record"
    except (OSError, ValueError, TypeError, KeyError):
        return "no readable completion record"
    if listed != expected:
        return "its record does not match the source's listing"
    present = sorted(p.relative_to(local).as_posix() for p in _files(local) if p.name != MARKER)
    if present != sorted(e["path"] for e in recorded):
        return "it holds other files than it recorded"
    measured = _measure(local, expected)
    changed = [m["path"] for m, r in zip(measured, recorded) if m != r]
    return f"{object_keys.display_key(changed[0])} changed since it was downloaded" if changed else None


def _files(directory: Path) -> list[Path]:
    """Every file and symlink under `directory` (a symlink counts as a file: it is not ours)."""
    return [Path(d, name) for d, dirs, names in os.walk(directory)
            for name in names + [x for x in dirs if Path(d, x).is_symlink()]]


def _measure(directory: Path, expected: list[dict]) -> list[dict]:
    """`expected` with each file's size and sha256 as found in `directory` (symlinks not followed)."""
    def measure(entry: dict) -> dict:
        path = directory / entry["path"]
        if path.is_symlink() or not path.is_file():
            return {**entry, "size": None, "sha256": None}
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return {**entry, "size": path.stat().st_size, "sha256": digest}

    with ThreadPoolExecutor(HASH_THREADS) as pool:
        return list(pool.map(measure, expected))


def _replace_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`: an old copy is renamed aside first (atomic), then deleted."""
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / "copy")
        shutil.rmtree(old, ignore_errors=True)
    os.replace(new, target)
