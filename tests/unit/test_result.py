"""RunResult, result.json's one record: serialized once, redacted there, valid against the schema."""

import json

import jsonschema
import pytest

from dreambooth_job import __version__
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs import result as result_module
from dreambooth_job.outputs.result import ClassImagesInfo, Rejection, Training
from dreambooth_job.phases.context import new_result

PRESIGNED = "https://host/base.tar?X-Amz-Signature=c0ffee&a=1"


def config(tmp_path, **overrides) -> TrainConfig:
    fields = dict(instance_data=str(tmp_path / "photos"), class_noun="dog", output=str(tmp_path / "out"),
                  subject_id="rex", job_id="rex-1", prior_preservation=True)
    return TrainConfig(**{**fields, **overrides})


def written(result, output) -> dict:
    result.write(str(output))
    return json.loads((output / "result.json").read_text())


def test_a_new_run_is_failed_until_it_succeeds_and_valid_against_the_schema(tmp_path, monkeypatch):
    monkeypatch.delenv(result_module.IMAGE_ENV, raising=False)
    record = written(new_result(config(tmp_path), "f" * 64), tmp_path / "out")
    jsonschema.validate(record, result_module.schema())
    assert (record["status"], record["exit_code"]) == ("failed", int(ExitCode.INTERNAL_ERROR))
    assert record["package_version"] == __version__ and record["image"] is None
    assert set(record["prompts"]) == {"instance", "class", "validation"}
    assert "finished_at" not in record  # unknown until the run ends; the schema has no null for it
    assert "device" not in record["training"]


def test_a_finished_run_records_every_part_and_the_image_that_ran(tmp_path, monkeypatch):
    monkeypatch.setenv(result_module.IMAGE_ENV, "registry.example/dreambooth-job:0.1.0")
    result = new_result(config(tmp_path), "f" * 64)
    result.photos.used = ["a.jpg"]
    result.photos.rejected = [Rejection(file="b.txt", reason="not an image")]
    result.class_images = ClassImagesInfo(requested=4, generated=1, reused=3, cache_uri="s3://c/x",
                                          cache_key="k")
    result.training = Training(max_train_steps=8, steps_done=8, final_loss=0.25, final_instance_loss=0.2,
                               final_prior_loss=0.05, resumed_from_step=4, device="cpu",
                               mixed_precision="no", gradient_checkpointing=False)
    result.durations_seconds = {"train": 1.5}
    result.metrics = {"protocol": {}, "finetuned": {"dino": 0.5}}
    result.succeeded()
    record = written(result, tmp_path / "out")
    jsonschema.validate(record, result_module.schema())
    assert (record["status"], record["exit_code"], record["error"]) == ("succeeded", 0, None)
    assert record["image"] == "registry.example/dreambooth-job:0.1.0"
    assert record["photos"]["rejected"] == [{"file": "b.txt", "reason": "not an image"}]
    assert record["training"]["resumed_from_step"] == 4 and record["training"]["device"] == "cpu"
    assert record["finished_at"]


def test_a_failed_run_records_the_error_line_and_every_string_is_redacted(tmp_path):
    result = new_result(config(tmp_path), "f" * 64)
    result.config["base_model"] = result.base_model.source = PRESIGNED
    result.failed(ExitCode.INVALID_INPUT, f"cannot read --base-model {PRESIGNED}")
    result.write(str(tmp_path / "out"))
    text = (tmp_path / "out" / "result.json").read_text()
    record = json.loads(text)
    jsonschema.validate(record, result_module.schema())
    assert (record["status"], record["exit_code"]) == ("failed", int(ExitCode.INVALID_INPUT))
    assert "c0ffee" not in text
    assert "X-Amz-Signature=[REDACTED]" in record["error"]
    assert "X-Amz-Signature=[REDACTED]" in record["config"]["base_model"]
    assert "X-Amz-Signature=[REDACTED]" in record["base_model"]["source"]


@pytest.mark.parametrize("bad", [{"status": "maybe"}, {"exit_code": "one"}])
def test_the_schema_check_catches_a_wrong_record(tmp_path, bad):
    record = new_result(config(tmp_path), "f" * 64).to_json()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**record, **bad}, result_module.schema())
