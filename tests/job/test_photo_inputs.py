"""What a tenant puts under --instance-data is hostile: caps hold before any download, and only
photos are downloaded. The job fails in its first phases here, so no model is trained."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import upload_photos

from dreambooth_job import job
from dreambooth_job.cli import main
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.events import JobObserver
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.storage import places as storage


class Downloads(JobObserver):
    def __init__(self):
        self.bytes = 0

    def transfer(self, *, direction: str, num_bytes: int, objects: int) -> None:
        if direction == "download":
            self.bytes += num_bytes


@pytest.mark.parametrize("cap, value", [("--max-photos", "3"), ("--max-photos-bytes", "1000")])
def test_photos_over_a_cap_exit_2_with_one_line_naming_it(bucket, photo_dir, tiny_model, tmp_path,
                                                          cap, value):
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")  # four photos of ~10 KB
    outcome = CliRunner().invoke(main, [
        "train", "--instance-data", photos, "--class-noun", "dog", "--base-model", str(tiny_model),
        "--output", f"s3://{bucket}/runs/dog/", "--cache-dir", str(tmp_path / "cache"),
        "--metrics-port", "0", "--log-format", "json", cap, value], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith(f"more than {cap} {value}"), outcome.output
    failed = json.loads(storage.read_bytes(f"s3://{bucket}/runs/dog/result.json"))
    assert failed["status"] == "failed" and failed["exit_code"] == ExitCode.INVALID_INPUT


def test_photos_over_a_cap_are_not_downloaded(bucket, photo_dir, tiny_model, tmp_path):
    config = TrainConfig(instance_data=upload_photos(photo_dir, f"s3://{bucket}/photos/dog/"),
                         class_noun="dog", base_model=str(tiny_model), output=f"s3://{bucket}/runs/dog/",
                         cache_dir=str(tmp_path / "cache"), metrics_port=0, max_photos=3)
    downloads = Downloads()
    with pytest.raises(InvalidInputError, match="holds 4 photos, more than --max-photos 3"):
        job.run(config, downloads)
    assert downloads.bytes == 0


def test_objects_that_are_not_photos_are_never_downloaded(bucket, tiny_model, tmp_path):
    source = f"s3://{bucket}/photos/dog/"
    storage.write_bytes(f"{source}readme.txt", b"no photos here")
    storage.write_bytes(f"{source}weights.bin", bytes(2_000_000))
    config = TrainConfig(instance_data=source, class_noun="dog", base_model=str(tiny_model),
                         output=f"s3://{bucket}/runs/dog/", cache_dir=str(tmp_path / "cache"),
                         metrics_port=0)
    downloads = Downloads()
    with pytest.raises(InvalidInputError, match="0 valid photo.*readme.txt.*weights.bin"):
        job.run(config, downloads)
    assert downloads.bytes < 2_000_000
