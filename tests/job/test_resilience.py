"""Fault tests: preemption, corrupt checkpoints, an object store that goes away, reruns, conflicts,
and secrets. Each uses the real S3 server and the job as a child process; those marked
`every_family` run on each family's tiny model (tests/helpers.py), the others on SD's."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import JobProcess, every_family, job_args, upload_photos
from safetensors.torch import load_file

from dreambooth_job.devtools import s3server
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client
from dreambooth_job.training.checkpoint import CheckpointStore

STEPS = 12
COMMON = ["train", "--class-noun", "dog", "--resolution", "64", "--max-train-steps", str(STEPS),
          "--num-class-images", "2", "--sample-steps", "2", "--num-validation-images", "1",
          "--validation-prompt", "a {identifier} {class_noun}", "--log-every", "1",
          "--progress-interval-seconds", "0",
          "--learning-rate", "1e-3", "--checkpoint-every", "4", "--metrics-port", "0",
          "--log-format", "json"]


@pytest.fixture
def job(bucket, photo_dir, family_model, tmp_path):
    return job_args(COMMON, bucket, photo_dir, family_model.path, tmp_path / "cache")


def final_weights(output_uri: str, tmp_path) -> dict[str, torch.Tensor]:
    """Every tensor of the published model/, whatever its family's modules, by file and name."""
    model = storage.join(output_uri, "model")
    local = tmp_path / output_uri.rstrip("/").rsplit("/", 1)[-1]
    storage.download_dir(model, local)
    return {f"{file.relative_to(local)}:{name}": tensor
            for file in sorted(local.rglob("*.safetensors")) for name, tensor in load_file(file).items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a and a.keys() == b.keys()
    # CPU kernels are deterministic here, so a resumed run must match bitwise.
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert not mismatched, f"{len(mismatched)} tensors differ, e.g. {mismatched[:3]}"


def interrupt(args: list[str], at_step: int) -> JobProcess:
    """Start the job, send SIGTERM once it logged step `at_step`, and wait for it to exit."""
    process = JobProcess(args)
    process.wait_for(rf"step {at_step}/{STEPS}\b")
    process.process.terminate()
    assert process.wait() == ExitCode.TERMINATED, process.output[-3000:]
    return process


@pytest.fixture
def reference(job, bucket, tmp_path):
    process = JobProcess(job("reference"))
    assert process.wait() == ExitCode.OK, process.output[-3000:]
    return final_weights(f"s3://{bucket}/reference/", tmp_path)


@every_family
def test_sigterm_checkpoints_and_the_rerun_resumes_to_the_same_weights(job, bucket, reference, tmp_path):
    run = f"s3://{bucket}/preempted/"
    stopped = interrupt(job("preempted"), at_step=6)
    assert "SIGTERM received" in stopped.output
    newest = CheckpointStore(run, keep=2).list()[0]
    assert newest.step >= 6
    assert CheckpointStore(run, keep=2).fetch(newest, tmp_path / "verify"), "checkpoint verifies"
    failed = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    assert failed["status"] == "failed" and failed["exit_code"] == ExitCode.TERMINATED

    conflicting = JobProcess(job("preempted", "--resolution", "128"))
    assert conflicting.wait() == ExitCode.INVALID_INPUT
    assert "differs in: resolution" in conflicting.output
    assert "phase download" not in conflicting.output, "conflicts are found before any download"

    # Operational options are not the run's identity: changing them resumes, to the same weights.
    resumed = JobProcess(job("preempted", "--log-every", "5", "--checkpoints-keep", "3"))
    assert resumed.wait() == ExitCode.OK, resumed.output[-3000:]
    assert f"resuming from checkpoint {newest.uri} at step {newest.step}" in resumed.output
    assert_same_weights(final_weights(run, tmp_path), reference)
    assert not CheckpointStore(run, keep=2).list(), "checkpoints are removed once the run is published"


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(job, bucket, reference, tmp_path):
    run = f"s3://{bucket}/corrupt/"
    interrupt(job("corrupt"), at_step=9)
    newest, previous = CheckpointStore(run, keep=2).list()[:2]
    weights = storage.join(newest.uri, "model.safetensors")
    data = bytearray(storage.read_bytes(weights))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(weights, bytes(data))

    resumed = JobProcess(job("corrupt"))
    assert resumed.wait() == ExitCode.OK, resumed.output[-3000:]
    assert "does not match its manifest" in resumed.output
    assert f"at step {previous.step}" in resumed.output
    assert_same_weights(final_weights(run, tmp_path), reference)


def test_a_checkpoint_without_manifest_is_ignored(job, bucket, tmp_path):
    run = f"s3://{bucket}/partial/"
    interrupt(job("partial"), at_step=5)
    newest = CheckpointStore(run, keep=2).list()[0]
    storage.delete(storage.join(newest.uri, "manifest.json"))
    assert all(c.step != newest.step for c in CheckpointStore(run, keep=2).list())


@every_family
def test_rerun_after_success_exits_0_without_training(job, bucket):
    first = JobProcess(job("twice"))
    assert first.wait() == ExitCode.OK
    before = storage.read_bytes(f"s3://{bucket}/twice/result.json")
    second = JobProcess(job("twice"))
    assert second.wait() == ExitCode.OK
    assert "already holds a completed run" in second.output
    assert "phase download" not in second.output and "phase train" not in second.output
    assert storage.read_bytes(f"s3://{bucket}/twice/result.json") == before


@every_family
def test_completed_run_of_another_config_is_not_overwritten_without_force(job, bucket):
    assert JobProcess(job("other")).wait() == ExitCode.OK
    changed = JobProcess(job("other", "--learning-rate", "5e-4"))
    assert changed.wait() == ExitCode.INVALID_INPUT
    assert "differs in: learning_rate" in changed.output
    forced = JobProcess(job("other", "--learning-rate", "5e-4", "--force"))
    assert forced.wait() == ExitCode.OK
    result = json.loads(storage.read_bytes(f"s3://{bucket}/other/result.json"))
    assert result["config"]["learning_rate"] == 5e-4


def test_object_store_restart_during_upload_is_retried(photo_dir, tiny_model, tmp_path, monkeypatch):
    with s3server.LocalS3Server(tmp_path / "flaky") as server:
        env = server.client_env()
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s3_client.reset_client()
        s3_client.s3_client().create_bucket(Bucket="flaky")
        photos = upload_photos(photo_dir, "s3://flaky/photos/")
        process = JobProcess(
            [*COMMON, "--instance-data", photos, "--base-model", str(tiny_model),
             "--no-prior-preservation", "--cache-dir", str(tmp_path / "cache"),
             "--output", "s3://flaky/run/"],
            # A generous retry budget: the restart itself can take many seconds on a busy machine.
            env={**env, "AWS_MAX_ATTEMPTS": "30"})
        process.wait_for(r"phase sample started")
        server.stop()
        process.wait_for(r"S3 request failed")
        server.start(fresh=False)
        assert process.wait() == ExitCode.OK, process.output[-3000:]
        s3_client.reset_client()
        assert storage.exists("s3://flaky/run/_SUCCESS")
    # The session's server again, once monkeypatch restores the environment.
    s3_client.reset_client()


def test_unreachable_object_store_exits_with_the_retryable_code(photo_dir, tiny_model, tmp_path):
    closed = f"http://127.0.0.1:{s3server.free_port()}"
    process = JobProcess(
        [*COMMON, "--instance-data", "s3://nowhere/photos/", "--base-model", str(tiny_model),
         "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")],
        env={"AWS_ENDPOINT_URL": closed, "AWS_MAX_ATTEMPTS": "2", "AWS_ACCESS_KEY_ID": "k",
             "AWS_SECRET_ACCESS_KEY": "s"})
    assert process.wait() == ExitCode.RETRYABLE
    assert "S3 unreachable" in process.output


def test_no_secret_in_logs_or_result(job, bucket, s3_server):
    secret = s3_server.client_env()["AWS_SECRET_ACCESS_KEY"]
    key_id = s3_server.client_env()["AWS_ACCESS_KEY_ID"]
    # Pushgateway credentials come from the environment (a URL with them is refused).
    process = JobProcess(job("secrets", "--pushgateway", "http://127.0.0.1:1/"),
                         env={"AWS_SESSION_TOKEN": "session-token-value-123",
                              "DREAMBOOTH_PUSHGATEWAY_USERNAME": "ops",
                              "DREAMBOOTH_PUSHGATEWAY_PASSWORD": "hunter22"})
    assert process.wait() == ExitCode.OK, process.output[-3000:]
    result = storage.read_bytes(f"s3://{bucket}/secrets/result.json").decode()
    for leaked in (secret, key_id, "session-token-value-123", "hunter22"):
        assert leaked not in process.output
        assert leaked not in result
