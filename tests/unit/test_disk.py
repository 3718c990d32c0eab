"""Out-of-space failures, written for real: /dev/full fails every write with ENOSPC (any user).
Libraries that write through a temporary file and rename it (safetensors) would replace
/dev/full itself: those are tested on a small tmpfs in tests/job/test_out_of_disk.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dreambooth_job.exit_codes import ExitCode, InvalidInputError, RetryableError
from dreambooth_job.storage import disk

FULL = Path("/dev/full")
pytestmark = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")


def test_a_write_without_a_file_name_names_the_directory_written(tmp_path):
    target = tmp_path / "checkpoint"
    with pytest.raises(RetryableError) as raised, disk.writing(target), FULL.open("wb") as sink:
        sink.write(b"x" * 2**20)  # fails at the flush: OSError(ENOSPC), no filename
    assert raised.value.exit_code == ExitCode.RETRYABLE
    assert raised.value.message == f"no space left on device writing {target}"


def test_other_failures_pass_unchanged(tmp_path):
    with pytest.raises(ValueError, match="a bug"), disk.writing(tmp_path):
        raise ValueError("a bug")
    with pytest.raises(InvalidInputError), disk.writing(tmp_path):
        raise InvalidInputError("bad input")
    with pytest.raises(FileNotFoundError), disk.writing(tmp_path):
        (tmp_path / "missing" / "file").read_bytes()
