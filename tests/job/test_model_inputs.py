"""A base model or VAE that is there but does not load: a local directory or an s3:// prefix loads
the same files on every attempt, so it is exit 2 naming the option and the reason, never the hub's
retryable 75 (which stays for a hub id the network could not fetch)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from helpers import upload_photos

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage

FAST = ["--resolution", "64", "--max-train-steps", "2", "--no-prior-preservation", "--sample-steps", "1",
        "--num-validation-images", "1", "--validation-prompt", "a {identifier} {class_noun}",
        "--metrics-port", "0", "--log-format", "json"]


def broken_copy(tiny_model, tmp_path, damage: str):
    """A copy of the tiny pipeline with one file damaged: `weights` (not safetensors) or
    `config` (not JSON)."""
    copy = tmp_path / f"broken-{damage}"
    shutil.copytree(tiny_model, copy)
    if damage == "weights":
        (copy / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    else:
        (copy / "unet" / "config.json").write_text("{not json")
    return copy


def train(bucket, photo_dir, tiny_model, tmp_path, *args):
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    return CliRunner().invoke(main, [
        "train", *FAST, "--class-noun", "dog", "--instance-data", photos, "--base-model", str(tiny_model),
        "--output", f"s3://{bucket}/runs/dog/", "--cache-dir", str(tmp_path / "cache"), *args],
        catch_exceptions=False)


def assert_refused(outcome, bucket, flag: str, source: str) -> None:
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output[-3000:]
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot load {flag} {source}: "), errors
    assert "from the hub" not in errors[0]
    assert "phase train" not in outcome.output
    result = json.loads(storage.read_bytes(f"s3://{bucket}/runs/dog/result.json"))
    assert result["status"] == "failed" and result["exit_code"] == ExitCode.INVALID_INPUT


@pytest.mark.parametrize("damage", ["weights", "config"])
def test_a_local_base_model_that_does_not_load_exits_2_naming_it(bucket, photo_dir, tiny_model, tmp_path,
                                                                 damage):
    model = str(broken_copy(tiny_model, tmp_path, damage))
    outcome = train(bucket, photo_dir, tiny_model, tmp_path, "--base-model", model)
    assert_refused(outcome, bucket, "--base-model", model)


@pytest.mark.parametrize("damage", ["weights", "config"])
def test_an_s3_base_model_that_does_not_load_exits_2_naming_it(bucket, photo_dir, tiny_model, tmp_path,
                                                               damage):
    model = f"s3://{bucket}/models/broken/"
    storage.upload_dir(broken_copy(tiny_model, tmp_path, damage), model)
    outcome = train(bucket, photo_dir, tiny_model, tmp_path, "--base-model", model)
    assert_refused(outcome, bucket, "--base-model", model)


def test_a_local_vae_that_does_not_load_exits_2_naming_it(bucket, photo_dir, tiny_model, tmp_path):
    vae = str(broken_copy(tiny_model, tmp_path, "weights") / "unet")  # an AutoencoderKL it is not
    (tmp_path / "broken-weights" / "unet" / "config.json").write_text(
        (tiny_model / "vae" / "config.json").read_text())
    outcome = train(bucket, photo_dir, tiny_model, tmp_path, "--vae", vae)
    assert_refused(outcome, bucket, "--vae", vae)
