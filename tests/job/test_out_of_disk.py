"""A really full disk: a small tmpfs mounted for the test (needs root; skipped otherwise).

The job's checkpoint lands in a /tmp too small for it, as when a node's disk fills up under a pod:
the job must exit 75 (retry) with one line naming the path, in its log, result.json and the
termination log, instead of an "unexpected" crash.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import JobProcess, upload_photos
from safetensors.torch import save_file

from dreambooth_job.exit_codes import ExitCode, RetryableError
from dreambooth_job.storage import disk
from dreambooth_job.storage import places as storage
from dreambooth_job.termination import TERMINATION_LOG_ENV


@pytest.fixture
def small_disk(tmp_path):
    """mount(size, inodes) -> a fresh tmpfs of that size, unmounted after the test."""
    mounts = []

    def mount(size: str, inodes: int | None = None) -> Path:
        path = tmp_path / f"disk-{len(mounts)}"
        path.mkdir()
        options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, check=False)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here (root needed): {done.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        # Lazily: a failed writer may still hold a file open there (its traceback keeps it).
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(path: Path) -> None:
    with pytest.raises(OSError), (path / "filler").open("wb") as sink:
        while True:
            sink.write(b"\0" * 2**16)


def test_torch_save_on_a_full_disk_is_out_of_space(small_disk):
    """torch.save's error names neither the errno nor the file: the full disk tells."""
    state = small_disk("1m") / "checkpoint"
    state.mkdir()
    with pytest.raises(RetryableError, match=f"no space left on device writing {state}$"), \
            disk.writing(state):
        torch.save({"moments": torch.zeros(2**19)}, state / "optimizer.bin")


def test_safetensors_on_a_full_disk_is_out_of_space(small_disk):
    model = small_disk("1m") / "model"
    model.mkdir()
    fill(model)
    with pytest.raises(RetryableError, match="no space left on device writing"), disk.writing(model):
        save_file({"w": torch.zeros(2**16)}, str(model / "unet.safetensors"))


def test_a_file_the_disk_had_no_room_for_is_named(small_disk):
    full = small_disk("1m", inodes=4)
    with pytest.raises(RetryableError) as raised, disk.writing(full):
        for i in range(8):  # out of inodes: open() fails with ENOSPC and the file's name
            (full / f"class-{i}.png").write_bytes(b"")
    assert raised.value.message.startswith(f"no space left on device writing {full}/class-")


def test_job_out_of_disk_exits_retryable_naming_the_path(small_disk, bucket, photo_dir, tiny_model,
                                                          tmp_path):
    work = small_disk("6m")  # the photos fit, the tiny model's 12 MB checkpoint does not
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    output = f"s3://{bucket}/runs/dog/"
    log = tmp_path / "termination-log"
    process = JobProcess([
        "train", "--instance-data", photos, "--class-noun", "dog", "--output", output,
        "--base-model", str(tiny_model), "--cache-dir", str(tmp_path / "cache"),
        "--resolution", "64", "--max-train-steps", "4", "--checkpoint-every", "2",
        "--no-prior-preservation", "--sample-steps", "1", "--num-validation-images", "1",
        "--validation-prompt", "a {identifier} {class_noun}", "--metrics-port", "0",
        "--log-format", "text"], env={"TMPDIR": str(work), TERMINATION_LOG_ENV: str(log)})
    assert process.wait() == ExitCode.RETRYABLE, process.output[-3000:]
    message = log.read_text().strip()
    assert message.startswith(f"no space left on device writing {work}/"), message
    assert f"error: {message}" in process.output
    result = json.loads(storage.read_bytes(storage.join(output, "result.json")))
    assert (result["status"], result["exit_code"], result["error"]) == ("failed", 75, message)
