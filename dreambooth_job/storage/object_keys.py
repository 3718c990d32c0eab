"""Object keys are strings, not paths: which listed keys may become files under a local directory.

S3 keys are opaque: `a//b`, `../x`, `/etc/x` and `a\\b` are all valid keys (AWS keeps them
verbatim), and pathlib would put them outside the target directory, or onto another key's file.
Every key that storage/places.py turns into a local path passes `check_listing` first, before anything is
written; photos skip and name a refused key, models and checkpoints exit 2 naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dreambooth_job.exit_codes import InvalidInputError

if TYPE_CHECKING:
    from dreambooth_job.storage.places import StoredFile


# The longest key segment that can become a local file name: Linux filesystems take 255 bytes
# (NAME_MAX: ext4, xfs, overlayfs), and a download first writes `<name>.<8 random characters>`
# (s3transfer) before renaming it. S3 takes segments up to 1024 bytes; a longer one than this
# would fail the download with ENAMETOOLONG.
SEGMENT_MAX_BYTES = 255 - len(".12345678")


class UnsafeKeyError(InvalidInputError):
    """A listed key that cannot become a local path: it would land outside the target directory,
    or somewhere else than the key says."""


def unsafe_reason(relative_path: str) -> str | None:
    """Why a listed key's part under its prefix cannot be a path under a local directory, or None."""
    if any(c == "\\" or c == "\0" or not c.isprintable() for c in relative_path):
        return "has a backslash, NUL or control character"
    if relative_path.startswith("/"):
        return "is absolute (starts with '/')"
    segments = relative_path.split("/")
    if "" in segments:
        return "has an empty segment ('//')"
    if "." in segments or ".." in segments:
        return "has a '.' or '..' segment"
    if any(len(segment.encode()) > SEGMENT_MAX_BYTES for segment in segments):
        return (f"has a segment longer than {SEGMENT_MAX_BYTES} bytes (a file name's 255, less the "
                "download's temporary suffix)")
    return None


def display_key(key: str) -> str:
    """A key for a log line or message: control characters escaped, so it stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in key)


def check_listing(files: list[StoredFile], local_dir: Path,
                  source_root: Path | None = None) -> dict[StoredFile, str]:
    """The files of a listing (storage.list_files) that cannot be copied under `local_dir`, with
    the reason: an unsafe key shape, a key that is also the folder of other keys (`x.jpg` and
    `x.jpg/y.jpg`), a file of the local directory `source_root` that is a symlink leading out of
    it, a target that resolves out of `local_dir` (through a symlink already there)."""
    unsafe = {f: reason for f in files if (reason := unsafe_reason(f.relative_path))}
    folders = {parent.as_posix() for f in files if f not in unsafe
               for parent in Path(f.relative_path).parents}
    source_root = source_root.resolve() if source_root is not None else None
    target_root = local_dir.resolve()
    for f in files:
        if f in unsafe:
            continue
        if f.relative_path in folders:
            unsafe[f] = "is also the folder of other keys under the prefix"
        elif source_root is not None and f.key and not Path(f.key).resolve().is_relative_to(source_root):
            unsafe[f] = "is a symlink that leaves the directory"
        elif not (target_root / f.relative_path).resolve().is_relative_to(target_root):
            unsafe[f] = f"resolves outside {local_dir}"
    return unsafe
