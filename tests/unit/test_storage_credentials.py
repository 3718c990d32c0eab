"""Credentials at start-up: missing or expired ones are waited for, within a bounded window, then
end the job as retryable (75); AccessDenied stays invalid input (2). The clock and sleep are the
test's; the S3 server and boto3's credential chain are real."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode, InvalidInputError, RetryableError
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client, s3_credentials

CREDENTIAL_SOURCES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                      "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                      "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


class FakeTime:
    """A clock that sleeping advances; `on_sleep(n)` runs after the n-th sleep."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = lambda n: None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.sleeps))


@pytest.fixture
def fake_time(monkeypatch) -> FakeTime:
    time = FakeTime()
    monkeypatch.setattr(s3_credentials, "current",
                        s3_credentials.CredentialsWait(60, clock=time.clock, sleep=time.sleep))
    return time


@pytest.fixture
def stored(bucket) -> str:
    uri = f"s3://{bucket}/photos/a.jpg"
    storage.write_bytes(uri, b"photo")
    return uri


@pytest.fixture
def no_credentials(s3_server, stored, monkeypatch) -> dict[str, str]:
    """boto3 finds no credentials anywhere (as before IRSA's token is there); returns the ones that
    would work."""
    for name in CREDENTIAL_SOURCES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3_client.reset_client()
    yield {k: v for k, v in s3_server.client_env().items() if k.startswith("AWS_SECRET") or "KEY_ID" in k}
    s3_client.reset_client()


def test_credentials_that_arrive_within_the_window_are_used(no_credentials, stored, fake_time, monkeypatch):
    def credentials_appear(sleeps: int) -> None:
        if sleeps == 3:
            for name, value in no_credentials.items():
                monkeypatch.setenv(name, value)

    fake_time.on_sleep = credentials_appear
    assert storage.read_bytes(stored) == b"photo"
    assert fake_time.sleeps == [1, 2, 4], "backoff doubles"


def test_credentials_that_never_arrive_end_the_job_as_retryable(no_credentials, stored, fake_time):
    expected = "no usable S3 credentials.*waited for during the first 60s"
    with pytest.raises(RetryableError, match=expected) as failure:
        storage.read_bytes(stored)
    assert failure.value.exit_code == ExitCode.RETRYABLE
    assert sum(fake_time.sleeps) == 60, "the wait ends with the window"
    assert max(fake_time.sleeps) == 10, "the backoff is capped"


def test_an_expired_token_is_retried(stored, encrypted_s3, fake_time):
    encrypted_s3.fail(2, "ExpiredToken")
    assert storage.read_bytes(stored) == b"photo"
    assert fake_time.sleeps == [1, 2]


def test_access_denied_is_not_waited_for(stored, encrypted_s3, fake_time):
    encrypted_s3.fail(1, "AccessDenied", 403)
    with pytest.raises(InvalidInputError, match="access denied"):
        storage.read_bytes(stored)
    assert fake_time.sleeps == []


def test_after_the_window_credential_errors_fail_at_once(stored, encrypted_s3, fake_time):
    assert storage.read_bytes(stored) == b"photo"  # the window starts at the first S3 call
    fake_time.now += 61
    encrypted_s3.fail(1, "ExpiredToken")
    with pytest.raises(RetryableError, match="ExpiredToken"):
        storage.read_bytes(stored)
    assert fake_time.sleeps == []


def test_train_without_credentials_exits_retryable_naming_the_wait(no_credentials, bucket, tmp_path):
    outcome = CliRunner().invoke(main, [
        "train", "--instance-data", f"s3://{bucket}/photos/", "--class-noun", "dog",
        "--output", f"s3://{bucket}/runs/dog/", "--base-model", "org/model", "--metrics-port", "0",
        "--cache-dir", str(tmp_path / "cache"), "--storage-credentials-wait-seconds", "0.2"])
    assert outcome.exit_code == ExitCode.RETRYABLE, outcome.output
    [error] = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert "no usable S3 credentials" in error and "waited for during the first 0.2s" in error


def test_the_wait_is_operational_and_leaves_config_fingerprints_alone():
    from dreambooth_job.config.run_identity import config_fingerprint
    from dreambooth_job.config.train_config import TrainConfig

    required = {"instance_data": "s3://b/photos/", "class_noun": "dog", "output": "s3://b/out/"}
    assert config_fingerprint(TrainConfig(**required)) == config_fingerprint(
        TrainConfig(**required, storage_credentials_wait_seconds=5))
