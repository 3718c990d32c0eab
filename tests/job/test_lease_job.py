"""The output lease as a pod sees it: a killed pod's retry goes on at once, another Job's run is
turned away retryably, and an object store that ignores conditional writes is refused. The job
runs as a child process against the real S3 server."""

from __future__ import annotations

import json

import pytest
from helpers import JobProcess, upload_photos
from storage_proxy import S3TestProxy

from dreambooth_job.config.operator_policy import ALLOW_UNCONDITIONAL_STORE_ENV
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage
from dreambooth_job.storage.lease import JOB_UID_ENV, LEASE_FILE

pytestmark = pytest.mark.slow

STEPS = 8
COMMON = ["train", "--class-noun", "dog", "--resolution", "64", "--max-train-steps", str(STEPS),
          "--no-prior-preservation", "--sample-steps", "2", "--num-validation-images", "1",
          "--validation-prompt", "a {identifier} {class_noun}", "--log-every", "1",
          "--progress-interval-seconds", "0", "--checkpoint-every", "3", "--metrics-port", "0",
          "--log-format", "json"]


@pytest.fixture
def job(bucket, photo_dir, tiny_model, tmp_path):
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")

    def args(output: str, *extra: str) -> list[str]:
        return [*COMMON, "--instance-data", photos, "--base-model", str(tiny_model),
                "--cache-dir", str(tmp_path / "cache"), "--output", f"s3://{bucket}/{output}/", *extra]

    return args


def test_a_killed_pods_retry_takes_over_its_lease_and_another_job_is_turned_away(job, bucket):
    lease = f"s3://{bucket}/killed/{LEASE_FILE}"
    killed = JobProcess(job("killed"), env={JOB_UID_ENV: "uid-1"})
    killed.wait_for(r"checkpoint \S+ written")
    killed.process.kill()  # SIGKILL, as the kernel's OOM killer sends: no release, no checkpoint
    assert killed.wait() == -9
    assert json.loads(storage.read_bytes(lease))["job_uid"] == "uid-1", "the lease outlives the pod"

    other_job = JobProcess(job("killed", "--lease-wait-seconds", "0"), env={JOB_UID_ENV: "uid-2"})
    assert other_job.wait() == ExitCode.RETRYABLE, other_job.output[-3000:]
    assert "holds the lease" in other_job.output
    assert "phase download" not in other_job.output

    retry = JobProcess(job("killed"), env={JOB_UID_ENV: "uid-1"})
    assert retry.wait() == ExitCode.OK, retry.output[-3000:]
    assert "this Job's previous pod" in retry.output
    assert "resuming from checkpoint" in retry.output
    assert storage.exists(f"s3://{bucket}/killed/_SUCCESS")
    assert not storage.exists(lease), "released once published"


@pytest.fixture
def store_ignoring_if_none_match(s3_server):
    with S3TestProxy(s3_server.endpoint, strip_headers={"if-none-match"}) as proxy:
        yield {"AWS_ENDPOINT_URL": proxy.endpoint}


def test_a_store_that_ignores_conditional_writes_is_refused_before_anything_runs(
        job, bucket, store_ignoring_if_none_match):
    refused = JobProcess(job("unsafe"), env=store_ignoring_if_none_match)
    assert refused.wait() == ExitCode.INVALID_INPUT, refused.output[-3000:]
    [line] = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert "does not enforce conditional writes (If-None-Match)" in line
    assert f"{ALLOW_UNCONDITIONAL_STORE_ENV}=true" in line
    assert "phase download" not in refused.output
    assert not storage.list_files(f"s3://{bucket}/unsafe/"), "nothing written, probe removed"

    allowed = JobProcess(job("unsafe", "--max-train-steps", "1", "--checkpoint-every", "0"),
                         env={**store_ignoring_if_none_match, ALLOW_UNCONDITIONAL_STORE_ENV: "true"})
    assert allowed.wait() == ExitCode.OK, allowed.output[-3000:]
    assert "ignores conditional writes" in allowed.output
