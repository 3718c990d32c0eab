"""result.schema.json is generated from `RunResult`: the checked-in file is what the generator
writes, every object is closed, and what is required or nullable follows what `write` writes."""

import copy

import jsonschema
import pytest

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.outputs import result as result_module
from dreambooth_job.outputs import result_schema
from dreambooth_job.outputs.result import OutputFile, Training
from dreambooth_job.phases.context import new_result


def finished_record(tmp_path) -> dict:
    config = TrainConfig(instance_data=str(tmp_path / "photos"), class_noun="dog",
                         output=str(tmp_path / "out"), subject_id="rex", job_id="rex-1")
    result = new_result(config, "f" * 64)
    result.training = Training(max_train_steps=2, steps_done=2, final_loss=0.5, device="cpu",
                               train_mode="lora", learning_rate=1e-4, resolution=64)
    result.outputs.files = [OutputFile(path="lora/a.safetensors", size=3, sha256="0" * 64)]
    result.succeeded()
    return result.to_json()


def objects(schema: dict, path: str = "$"):
    """Every object schema in `schema` with properties, and where it is."""
    if schema.get("properties"):
        yield path, schema
        for name, sub in schema["properties"].items():
            yield from objects(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from objects(schema["items"], f"{path}[]")


def test_the_checked_in_schema_is_the_generated_one():
    assert result_schema.SCHEMA_FILE.read_text() == result_schema.rendered(), (
        "run: python -m dreambooth_job.outputs.result_schema")
    assert result_schema.main(["--check"]) == 0
    assert result_module.schema() == result_schema.result_schema()


def test_every_object_of_the_record_is_closed():
    found = dict(objects(result_module.schema()))
    assert {"$", "$.training", "$.outputs", "$.outputs.files[]", "$.photos.rejected[]"} <= set(found)
    assert all(schema["additionalProperties"] is False for schema in found.values())


@pytest.mark.parametrize("where", [[], ["training"], ["outputs"], ["outputs", "files", 0],
                                   ["identifier"], ["class_images"]])
def test_a_key_the_record_does_not_define_fails_validation(tmp_path, where):
    record = finished_record(tmp_path)
    jsonschema.validate(record, result_module.schema())
    drifted = copy.deepcopy(record)
    part = drifted
    for key in where:
        part = part[key]
    part["not_a_field"] = 1
    with pytest.raises(jsonschema.ValidationError, match="not_a_field"):
        jsonschema.validate(drifted, result_module.schema())


def test_fields_always_written_are_required_and_those_left_out_until_known_are_not(tmp_path):
    schema = result_module.schema()
    record = new_result(TrainConfig(instance_data="x", class_noun="dog", output=str(tmp_path),
                                    subject_id="rex", job_id="rex-1"), "f" * 64).to_json()
    assert set(schema["required"]) == set(record)  # a new record writes every required field
    assert "finished_at" not in schema["required"] and "finished_at" in schema["properties"]
    assert set(schema["properties"]["training"]["required"]) == set(record["training"])
    assert schema["properties"]["error"]["type"] == ["string", "null"]  # written as null
    assert schema["properties"]["finished_at"]["type"] == "string"  # absent, never null
    assert "class" in schema["properties"]["prompts"]["properties"]  # the JSON name
    for missing in schema["required"]:
        with pytest.raises(jsonschema.ValidationError, match=missing):
            jsonschema.validate({k: v for k, v in record.items() if k != missing}, schema)


def test_bounds_and_choices_come_from_the_fields(tmp_path):
    record = finished_record(tmp_path)
    for bad in ({"status": "maybe"}, {"durations_seconds": {"train": -1.0}},
                {"training": {**record["training"], "train_mode": "half"}},
                {"training": {**record["training"], "resolution": 4}},
                {"outputs": {**record["outputs"], "files": [{"path": "a", "size": 1, "sha256": "x"}]}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**record, **bad}, result_module.schema())


def test_the_base_model_records_its_family_and_licence_or_null(tmp_path):
    """Both are written from the start (null until the model loads, or when no licence is
    declared); a rectified flow's prediction type is one of the schema's."""
    record = finished_record(tmp_path)
    assert record["base_model"]["family"] is None and record["base_model"]["license"] is None
    jsonschema.validate(record, result_module.schema())
    record["base_model"].update(family="flux2-klein", license="apache-2.0", prediction_type="flow")
    jsonschema.validate(record, result_module.schema())
    for bad in ({"prediction_type": "sample"}, {"family": 3}, {"license": ["apache-2.0"]}):
        drifted = copy.deepcopy(record)
        drifted["base_model"].update(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(drifted, result_module.schema())
