"""Hostile object keys through the whole job: photo keys that cannot be paths are skipped and named
(log and result.json); a base-model key that cannot be a path exits 2 naming it.

The bucket is on moto's S3 server, which keeps keys such as `../../x.jpg` verbatim as AWS S3 does.
"""

from __future__ import annotations

import json
import tempfile

from click.testing import CliRunner
from helpers import make_photo, upload_photos

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client

FAST = ["--resolution", "64", "--max-train-steps", "2", "--no-prior-preservation", "--sample-steps", "1",
        "--num-validation-images", "1", "--validation-prompt", "a {identifier} {class_noun}",
        "--metrics-port", "0", "--log-format", "json"]
ESCAPING_KEY = "photos/dog/../../escaped.jpg"


def train(bucket, tiny_model, tmp_path, *args):
    return CliRunner().invoke(main, [
        "train", *FAST, "--class-noun", "dog", "--instance-data", f"s3://{bucket}/photos/dog/",
        "--base-model", str(tiny_model), "--output", f"s3://{bucket}/runs/dog/",
        "--cache-dir", str(tmp_path / "cache"), *args], catch_exceptions=False)


def put_photo(bucket, key, tmp_path, seed=7) -> None:
    photo = make_photo(tmp_path / f"upload-{seed}.jpg", seed=seed)
    s3_client.s3_client().put_object(Bucket=bucket, Key=key, Body=photo.read_bytes())


def read_result(bucket) -> dict:
    return json.loads(storage.read_bytes(f"s3://{bucket}/runs/dog/result.json"))


def test_photo_keys_that_are_not_paths_are_skipped_and_named(moto_bucket, photo_dir, tiny_model, tmp_path):
    upload_photos(photo_dir, f"s3://{moto_bucket}/photos/dog/")
    put_photo(moto_bucket, ESCAPING_KEY, tmp_path)
    put_photo(moto_bucket, "photos/dog//abs.jpg", tmp_path, seed=8)
    outcome = train(moto_bucket, tiny_model, tmp_path)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    photos = read_result(moto_bucket)["photos"]
    assert len(photos["used"]) == 4
    reasons = {r["file"]: r["reason"] for r in photos["rejected"]}
    assert set(reasons) == {"../../escaped.jpg", "/abs.jpg"}
    assert "'..' segment" in reasons["../../escaped.jpg"] and "absolute" in reasons["/abs.jpg"]
    assert "skipping photo ../../escaped.jpg" in outcome.output


def test_only_unsafe_photo_keys_exit_2_naming_them(moto_bucket, tiny_model, tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the job's work dir goes here
    put_photo(moto_bucket, ESCAPING_KEY, tmp_path)
    outcome = train(moto_bucket, tiny_model, tmp_path)
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "../../escaped.jpg" in errors[0]
    assert read_result(moto_bucket)["photos"]["rejected"][0]["file"] == "../../escaped.jpg"
    assert not list(tmp_path.rglob("escaped.jpg")), "nothing written beside the work dir"


def test_an_unsafe_base_model_key_exits_2_naming_it(moto_bucket, photo_dir, tiny_model, tmp_path):
    upload_photos(photo_dir, f"s3://{moto_bucket}/photos/dog/")
    model = f"s3://{moto_bucket}/models/tiny/"
    storage.upload_dir(tiny_model, model)
    s3_client.s3_client().put_object(Bucket=moto_bucket, Key="models/tiny/unet/../../../../../x.bin",
                                     Body=b"x")
    outcome = train(moto_bucket, tiny_model, tmp_path, "--base-model", model)
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "models/tiny/unet/../../../../../x.bin" in errors[0]
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


LONG_SEGMENT = "x" * 296 + ".jpg"  # 300 bytes: S3 takes it, no Linux file name does (255 bytes)
# 250 bytes is a file name, but not the download's temporary `<name>.<8 characters>` beside it.
NEAR_LIMIT_SEGMENT = "y" * 246 + ".jpg"


def test_a_photo_key_segment_longer_than_a_file_name_is_skipped_and_named(moto_bucket, photo_dir,
                                                                        tiny_model, tmp_path):
    upload_photos(photo_dir, f"s3://{moto_bucket}/photos/dog/")
    put_photo(moto_bucket, f"photos/dog/{LONG_SEGMENT}", tmp_path)
    put_photo(moto_bucket, f"photos/dog/{NEAR_LIMIT_SEGMENT}", tmp_path, seed=8)
    outcome = train(moto_bucket, tiny_model, tmp_path)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    photos = read_result(moto_bucket)["photos"]
    assert len(photos["used"]) == 4
    reasons = {r["file"]: r["reason"] for r in photos["rejected"]}
    assert set(reasons) == {LONG_SEGMENT, NEAR_LIMIT_SEGMENT}
    assert all("has a segment longer than 246 bytes" in reason for reason in reasons.values())


def test_a_base_model_key_segment_longer_than_a_file_name_exits_2_naming_it(moto_bucket, photo_dir,
                                                                           tiny_model, tmp_path):
    upload_photos(photo_dir, f"s3://{moto_bucket}/photos/dog/")
    model = f"s3://{moto_bucket}/models/tiny/"
    storage.upload_dir(tiny_model, model)
    s3_client.s3_client().put_object(Bucket=moto_bucket, Key=f"models/tiny/unet/{LONG_SEGMENT}", Body=b"x")
    outcome = train(moto_bucket, tiny_model, tmp_path, "--base-model", model)
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and LONG_SEGMENT in errors[0] and "longer than 246 bytes" in errors[0]
