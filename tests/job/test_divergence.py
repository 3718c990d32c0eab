"""A diverging run (NaN or infinite loss or weights) fails as invalid input and publishes nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import upload_photos

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs.result import COMPLETION_MARKER
from dreambooth_job.storage import places as storage

TINY = ["--resolution", "64", "--sample-steps", "2", "--num-validation-images", "1",
        "--validation-prompt", "a {identifier} {class_noun}", "--no-prior-preservation",
        "--metrics-port", "0", "--log-format", "json"]


@pytest.mark.parametrize("steps, learning_rate, seen", [
    # Adam moves every weight by about the learning rate a step: 1e30 overflows float32 by the
    # second step, and the loss read at step 2 is NaN.
    ("4", "1e30", "the loss is nan"),
    # One step of 1e39 (infinite in float32) leaves infinite weights behind a finite loss: only
    # the check of the weights before publishing sees it.
    ("1", "1e39", "the weights are not finite"),
])
def test_a_diverging_run_exits_2_before_anything_is_published(
        bucket, photo_dir, tiny_model, tmp_path, steps, learning_rate, seen):
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    run = f"s3://{bucket}/runs/dog/"
    outcome = CliRunner().invoke(main, [
        "train", *TINY, "--max-train-steps", steps, "--log-every", "2",
        "--learning-rate", learning_rate, "--instance-data", photos, "--class-noun", "dog",
        "--base-model", str(tiny_model), "--output", run, "--cache-dir", str(tmp_path / "cache")],
        catch_exceptions=False)

    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and seen in errors[0] and "--learning-rate" in errors[0], errors
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    assert result["status"] == "failed" and result["exit_code"] == ExitCode.INVALID_INPUT
    assert "diverged" in result["error"]
    assert not storage.exists(storage.join(run, COMPLETION_MARKER))
    assert not storage.list_files(storage.join(run, "model"))
    assert not storage.list_files(storage.join(run, "samples"))


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_options_are_refused_before_anything_runs(value, tmp_path):
    outcome = CliRunner().invoke(main, [
        "train", "--instance-data", str(tmp_path), "--class-noun", "dog",
        "--output", str(tmp_path / "out"), "--prior-loss-weight", value])
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output
    assert outcome.output.strip().splitlines() == [
        f"error: --prior-loss-weight must be a finite number, got {float(value)}"]
    assert not (tmp_path / "out").exists()
