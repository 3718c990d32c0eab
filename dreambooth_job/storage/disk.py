"""Running out of local disk: a retryable error that names the path, not an "unexpected" crash.

    with disk.writing(state_dir):
        trainer.save_state(state_dir)   # a full disk: RetryableError("no space left on device writing ...")

The pod's ephemeral-storage is sized for the model (k8s/manifest.py), but a node's disk can
still fill up under the job (other pods, a larger model). Libraries report it each their own way:
an OSError with errno ENOSPC or EDQUOT, often without a file name (file.write, s3transfer); a
SafetensorError whose text says "No space left on device"; or torch.save's RuntimeError that says
neither ("unexpected pos ..."). `writing` recognises all three, the last by the disk being full
when the write failed. Exit 75: a retry, likely on another node, resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from dreambooth_job.exit_codes import JobError, RetryableError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How the errno reads in the text of errors that do not carry it (Python's, Rust's io::Error).
_NO_SPACE_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT),
                   f"os error {errno.ENOSPC}", f"os error {errno.EDQUOT}")
# A write that failed with less than this free is taken to have failed for lack of space, even
# when the error does not say so (torch.save).
NEARLY_FULL_BYTES = 16 * 2**20


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def says_no_space(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised from, reports ENOSPC or EDQUOT."""
    return any((isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS)
               or any(text in str(e) for text in _NO_SPACE_TEXTS) for e in _chain(exc))


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space of the filesystem holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return None


def out_of_space(exc: BaseException, *paths: str | os.PathLike) -> RetryableError | None:
    """The error to raise instead of `exc`, a failure while writing under `paths`, when it was
    for lack of space; None otherwise. It names the file when the error does, else the fullest
    of `paths`."""
    if isinstance(exc, JobError):
        return None
    free = {str(p): free_bytes(p) for p in paths}
    nearly_full = [p for p, f in free.items() if f is not None and f < NEARLY_FULL_BYTES]
    if not (says_no_space(exc) or nearly_full):
        return None
    named = next((e.filename2 or e.filename for e in _chain(exc) if isinstance(e, OSError)
                  and e.errno in NO_SPACE_ERRNOS and (e.filename2 or e.filename)), None)
    if named is None and free:
        by_free = {p: f if f is not None else float("inf") for p, f in free.items()}
        named = min(by_free, key=by_free.__getitem__)
    where = f"writing {os.fsdecode(named)}" if named is not None else "on the job's local disk"
    return RetryableError(f"no space left on device {where}")


@contextlib.contextmanager
def writing(*paths: str | os.PathLike) -> Iterator[None]:
    """Within this block, running out of space under `paths` raises RetryableError naming it."""
    try:
        yield
    except Exception as exc:
        error = out_of_space(exc, *paths)
        if error is None:
            raise
        raise error from exc
