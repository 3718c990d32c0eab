"""The whole job against a bucket that answers like SSE-KMS / SSE-C (ETags that are not MD5s):
photos, base model, class-image cache, lease and outputs all in it."""

from __future__ import annotations

import json

from click.testing import CliRunner
from helpers import upload_photos

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage

SMALL = ["--resolution", "64", "--max-train-steps", "2", "--num-class-images", "2",
         "--sample-steps", "2", "--num-validation-images", "1", "--log-every", "1",
         "--validation-prompt", "a {identifier} {class_noun}", "--metrics-port", "0"]


def test_train_from_and_to_an_encrypted_bucket(bucket, encrypted_s3, photo_dir, tiny_model, tmp_path):
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    storage.upload_dir(tiny_model, f"s3://{bucket}/models/tiny/")
    run = f"s3://{bucket}/runs/dog/"
    outcome = CliRunner().invoke(main, [
        "train", *SMALL, "--instance-data", photos, "--class-noun", "dog",
        "--base-model", f"s3://{bucket}/models/tiny/", "--output", run,
        "--class-data", f"s3://{bucket}/class-cache/", "--cache-dir", str(tmp_path / "cache")],
        catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    assert result["status"] == "succeeded" and len(result["photos"]["used"]) == 4
    assert result["base_model"]["source"] == f"s3://{bucket}/models/tiny/"
    copy = storage.download_dir(storage.join(run, "model"), tmp_path / "model")
    assert any(p.name == "model_index.json" for p in copy)
