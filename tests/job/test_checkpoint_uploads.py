"""Checkpoints upload in the background: training goes on meanwhile, one upload is in flight at a
time, and a failed upload still fails the job with its own error."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import upload_photos

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode, RetryableError
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client
from dreambooth_job.training.checkpoint import BackgroundUploads, CheckpointStore
from dreambooth_job.training.trainer import Trainer

# Only a safety net against a hang: every wait below is released by an event the test sets.
TIMEOUT = 120


def test_submit_returns_while_the_upload_is_still_running():
    release, finished = threading.Event(), threading.Event()

    def upload():
        release.wait(TIMEOUT)
        finished.set()

    uploads = BackgroundUploads()
    uploads.submit(upload)
    assert not finished.is_set(), "submit must not wait for its own upload"
    release.set()
    uploads.wait()
    assert finished.is_set()
    uploads.close()


def test_the_next_submit_waits_until_the_upload_in_flight_is_done():
    release, order = threading.Event(), []
    uploads = BackgroundUploads()

    def first():
        release.wait(TIMEOUT)
        order.append("first")

    uploads.submit(first)
    first_done_when_second_was_accepted = []

    def submit_second():
        uploads.submit(lambda: order.append("second"))
        first_done_when_second_was_accepted.append("first" in order)

    submitter = threading.Thread(target=submit_second)
    submitter.start()
    release.set()
    submitter.join(TIMEOUT)
    uploads.wait()
    assert first_done_when_second_was_accepted == [True]
    assert order == ["first", "second"]
    uploads.close()


def test_wait_raises_the_upload_error_and_close_only_logs_it(caplog):
    def failing():
        raise OSError("bucket gone")

    uploads = BackgroundUploads()
    uploads.submit(failing)
    with pytest.raises(OSError, match="bucket gone"):
        uploads.wait()
    uploads.submit(failing)
    with caplog.at_level(logging.WARNING, logger="dreambooth_job.training.checkpoint"):
        uploads.close()
    assert "checkpoint upload failed: bucket gone" in caplog.text


# ----------------------------------------------------------------------------------------------
ARGS = ["train", "--class-noun", "dog", "--resolution", "64", "--max-train-steps", "6",
        "--checkpoint-every", "2", "--no-prior-preservation", "--sample-steps", "2",
        "--num-validation-images", "1", "--validation-prompt", "a {identifier} {class_noun}",
        "--metrics-port", "0"]


@pytest.fixture
def run(bucket, photo_dir, tiny_model, tmp_path):
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    output = f"s3://{bucket}/runs/background/"

    def invoke(*extra):
        return CliRunner().invoke(main, [*ARGS, "--instance-data", photos, "--base-model", str(tiny_model),
                                         "--output", output, "--cache-dir", str(tmp_path / "cache"),
                                         *extra],
                                  catch_exceptions=False)

    return invoke, output


def test_training_goes_on_while_a_checkpoint_uploads(run, monkeypatch):
    invoke, output = run
    third_step_started = threading.Event()
    uploaded, released_by_training = [], []
    train_loss, store_save = Trainer.loss, CheckpointStore.save

    def loss(self, step):
        if step >= 2:  # 0-based: the step after the first checkpoint (written after step 2)
            third_step_started.set()
        return train_loss(self, step)

    def save(self, local_dir, step, *args, **kwargs):
        if step == 2:
            # Uploading inline would block training here, and the third step would never start.
            released_by_training.append(third_step_started.wait(TIMEOUT))
        saved = store_save(self, local_dir, step, *args, **kwargs)
        uploaded.append(step)
        return saved

    monkeypatch.setattr(Trainer, "loss", loss)
    monkeypatch.setattr(CheckpointStore, "save", save)
    outcome = invoke()
    assert outcome.exit_code == ExitCode.OK, outcome.output
    assert released_by_training == [True]
    assert uploaded == [2, 4]
    assert not CheckpointStore(output, keep=2).list(), "published runs keep no checkpoints"


def test_a_failed_background_upload_fails_the_job(run, monkeypatch):
    invoke, output = run

    def save(self, local_dir, step, *args, **kwargs):
        raise RetryableError(f"S3 upload of checkpoint {step} failed after retries")

    monkeypatch.setattr(CheckpointStore, "save", save)
    outcome = invoke()
    assert outcome.exit_code == ExitCode.RETRYABLE
    assert "S3 upload of checkpoint 2 failed after retries" in outcome.output
    result = json.loads(storage.read_bytes(storage.join(output, "result.json")))
    assert result["status"] == "failed" and result["exit_code"] == ExitCode.RETRYABLE
    assert not storage.exists(storage.join(output, "_SUCCESS"))


# ----------------------------------------------------------------------------------------------
# SIGTERM abandons the upload in flight: the checkpoint it writes supersedes that one, and waiting
# for it (SDXL: 31 GB) could take the whole grace period.

def test_abandon_stops_a_multipart_upload_midway_and_leaves_no_checkpoint(bucket, tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    (state / "optimizer.bin").write_bytes(bytes(3 * storage.MULTIPART_THRESHOLD))  # 3 parts
    (state / "scheduler.bin").write_bytes(b"lr")
    store = CheckpointStore(f"s3://{bucket}/runs/abandoned/", keep=2)
    uploads = BackgroundUploads()
    sending, progress = threading.Event(), storage._progress

    def hold_until_abandoned(cancel, uri, sent):
        # Some bytes of a part went out: the upload is in flight until the test abandons it.
        sending.set()
        cancel.wait(TIMEOUT)
        progress(cancel, uri, sent)

    monkeypatch.setattr(storage, "_progress", hold_until_abandoned)
    uploads.submit(lambda: store.save(state, 2, {}, "sks", cancel=uploads.abandoning))
    assert sending.wait(TIMEOUT)
    assert uploads.abandon() is True
    assert not uploads.abandoning.is_set(), "the next upload must not start cancelled"
    assert store.list() == []
    assert not storage.exists(store.root + "/step-000002/" + "manifest.json")
    open_uploads = s3_client.s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert open_uploads == [], "the cancelled multipart upload must be aborted"
    uploads.close()


def test_abandon_without_an_upload_in_flight_is_a_no_op():
    uploads = BackgroundUploads()
    assert uploads.abandon() is False
    uploads.submit(lambda: None)
    uploads.wait()
    assert uploads.abandon() is False
    uploads.close()


def test_sigterm_during_an_upload_abandons_it_and_the_rerun_resumes(run, monkeypatch):
    """SIGTERM after step 3 while step 2's checkpoint uploads: the job does not wait for that
    upload, writes step 3's and exits 143; the rerun resumes from step 3, its local copy of the
    checkpoint deleted once loaded."""
    invoke, output = run
    train_loss, store_save, load_state = Trainer.loss, CheckpointStore.save, Trainer.load_state
    outcomes = []

    def loss(self, step):
        if step == 2 and not outcomes:  # 0-based: the third step, while step 2's upload runs
            os.kill(os.getpid(), signal.SIGTERM)
        return train_loss(self, step)

    def save(self, local_dir, step, *args, cancel=None, **kwargs):
        if step == 2 and not outcomes:
            # An upload that only ends when abandoned; waiting for it is the bug.
            abandoned = cancel is not None and cancel.wait(TIMEOUT)
            outcomes.append("abandoned" if abandoned else "waited for")
            raise storage.TransferCancelled("step 2's upload") if abandoned else RuntimeError(
                "the SIGTERM checkpoint waited for the upload in flight")
        return store_save(self, local_dir, step, *args, cancel=cancel, **kwargs)

    monkeypatch.setattr(Trainer, "loss", loss)
    monkeypatch.setattr(CheckpointStore, "save", save)
    stopped = invoke("--termination-grace-seconds", "1")
    assert stopped.exit_code == ExitCode.TERMINATED, stopped.output
    assert outcomes == ["abandoned"]
    assert [c.step for c in CheckpointStore(output, keep=2).list()] == [3]
    # The job's check of its budget against its checkpoint, once the model loaded.
    assert "--termination-grace-seconds 1 is shorter than" in stopped.output
    assert "abandoned the upload of the previous checkpoint" in stopped.output

    resume_copies = []

    def load_and_note(self, directory, step):
        load_state(self, directory, step)
        resume_copies.append(Path(directory))

    def train_and_check(self, *args, **kwargs):
        resume_copies.append(resume_copies[0].exists())
        return train(self, *args, **kwargs)

    train = Trainer.train
    monkeypatch.setattr(Trainer, "load_state", load_and_note)
    monkeypatch.setattr(Trainer, "train", train_and_check)
    rerun = invoke()
    assert rerun.exit_code == ExitCode.OK, rerun.output
    assert resume_copies[1:] == [False], "the resume copy stays on local disk after loading"
