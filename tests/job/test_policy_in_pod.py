"""The operator's policy is checked again where the job runs (job.py, config/policy_checks.py): a config that
reached the pod without `submit` or `batch` (a chart value, a config file, extraArgs) and names
another tenant's prefix, or asks for more than a ceiling, is exit 2 naming the option, before any
photo is downloaded or anything is written. On the real S3 server, through the real CLI."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from helpers import upload_photos

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client

TINY = ["--resolution", "64", "--max-train-steps", "2", "--no-prior-preservation",
        "--sample-steps", "1", "--num-validation-images", "1", "--metrics-port", "0",
        "--checkpoint-every", "0", "--log-format", "json"]


def train(*args: str):
    return CliRunner().invoke(main, ["train", *args], catch_exceptions=False)


def error_lines(outcome) -> list[str]:
    return [line for line in outcome.output.splitlines() if line.startswith("error:")]


def keys(bucket: str, prefix: str) -> list[str]:
    listed = s3_client.s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


@pytest.fixture
def tenant_a(bucket, photo_dir, tiny_model, monkeypatch):
    """Tenant A's photos in its prefix; the operator allows that prefix and the image's model."""
    upload_photos(photo_dir, f"s3://{bucket}/tenant-a/dog/")
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES",
                       f"s3://{bucket}/tenant-a/,{tiny_model}")
    return ["--instance-data", f"s3://{bucket}/tenant-a/dog/", "--class-noun", "dog",
            "--base-model", str(tiny_model), "--output", f"s3://{bucket}/tenant-a/out/", *TINY]


def test_a_vae_in_another_tenants_prefix_is_exit_2_in_the_pod_before_any_work(
        bucket, tenant_a, tiny_model):
    storage.upload_dir(tiny_model / "vae", f"s3://{bucket}/tenant-b/vae/")
    outcome = train(*tenant_a, "--vae", f"s3://{bucket}/tenant-b/vae/")
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    [line] = error_lines(outcome)
    assert "--vae" in line and "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES" in line
    assert keys(bucket, "tenant-a/out/") == []


@pytest.mark.parametrize("flag, value, env, ceiling", [
    ("--gradient-accumulation-steps", "1000000", {}, "64"),
    ("--termination-grace-seconds", "31536000", {}, "600"),
    ("--max-train-steps", "50", {"DREAMBOOTH_OPERATOR_MAX_TRAIN_STEPS": "10"}, "10"),
    ("--lora-rank", "512", {}, "128"),
])
def test_a_request_above_an_operator_ceiling_is_exit_2_in_the_pod(
        bucket, tenant_a, monkeypatch, flag, value, env, ceiling):
    for name, setting in env.items():
        monkeypatch.setenv(name, setting)
    outcome = train(*tenant_a, flag, value)
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    [line] = error_lines(outcome)
    assert flag in line and f"ceiling of {ceiling}" in line and "DREAMBOOTH_OPERATOR_MAX_" in line
    assert keys(bucket, "tenant-a/out/") == []


def test_a_megabyte_subject_id_in_a_config_file_is_exit_2_in_one_short_line(
        bucket, tenant_a, tmp_path):
    config = tmp_path / "subject.yaml"
    config.write_text(yaml.safe_dump({"subject_id": "x" * 1_000_000}))
    outcome = train("--config", str(config), *tenant_a)
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    assert len(outcome.output) < 400
    [line] = error_lines(outcome)
    assert "--subject-id" in line and "at most 63" in line
    assert keys(bucket, "tenant-a/out/") == []
