"""Subjects files: formats, defaults, templates, and reporting every bad row at once."""

from __future__ import annotations

import json

import pytest

from dreambooth_job.k8s.batch import BatchFileError, load_batch

YAML = """\
defaults:
  output: s3://runs/night-42/{id}/
  class_data: s3://runs/class-cache/
  max_train_steps: 800
  batch_id: night-42
subjects:
  - {id: dog, instance_data: "s3://photos/dog/", class_noun: dog}
  - {id: teapot, instance_data: "s3://photos/teapot/", class_noun: teapot, learning_rate: 2.0e-6}
"""


def test_yaml_defaults_rows_and_templates(tmp_path):
    path = tmp_path / "night.yaml"
    path.write_text(YAML)
    batch = load_batch(path)
    assert batch.batch_id == "night-42"
    dog, teapot = batch.subjects
    assert dog.output == "s3://runs/night-42/dog/" and teapot.output == "s3://runs/night-42/teapot/"
    assert dog.subject_id == "dog" and dog.batch_id == "night-42"
    assert dog.max_train_steps == 800 and dog.learning_rate == 5e-6
    assert teapot.learning_rate == 2e-6
    assert dog.class_data == "s3://runs/class-cache/"
    # Prompts keep their own placeholder for the job to fill in.
    assert dog.instance_prompt == "a {identifier} {class_noun}"


def test_csv_with_set_defaults_and_class_noun_template(tmp_path):
    path = tmp_path / "tonight.csv"
    path.write_text("id,instance_data,class_noun,max_train_steps\n"
                    "dog,s3://photos/dog/,dog,\n"
                    "bear_plushie,s3://photos/bear/,stuffed animal,400\n")
    batch = load_batch(path, {"output": "s3://runs/{id}/", "class_data": "s3://cache/{class_noun}/",
                              "max_train_steps": "900"})
    assert batch.batch_id == "tonight"
    dog, bear = batch.subjects
    assert dog.max_train_steps == 900 and bear.max_train_steps == 400
    assert bear.class_data == "s3://cache/stuffed animal/"
    assert bear.output == "s3://runs/bear_plushie/"


def test_jsonl_with_defaults_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"defaults": {"output": "/tmp/out/{id}", "seed": 3}},
        {"id": "can", "instance_data": "s3://p/can/", "class_noun": "can"},
        {"id": "vase", "instance-data": "s3://p/vase/", "class_noun": "vase", "seed": 4},
    ]) + "\n")
    can, vase = load_batch(path).subjects
    assert (can.seed, vase.seed) == (3, 4)
    assert vase.instance_data == "s3://p/vase/"


def test_every_bad_row_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""\
defaults: {output: "s3://runs/{id}/"}
subjects:
  - {id: dog, instance_data: "s3://photos/dog/", class_noun: dog}
  - {id: cat, instance_data: "s3://photos/cat/", class_noun: cat, max_train_steps: many}
  - {id: cat2, instance_data: "s3://photos/cat2/"}
  - {id: "bad id!", instance_data: "s3://photos/x/", class_noun: x}
  - {id: dog, instance_data: "s3://photos/dog2/", class_noun: dog, learning_rat: 1}
""")
    with pytest.raises(BatchFileError) as caught:
        load_batch(path)
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert "subjects[1] (id cat)" in problems[0] and "max_train_steps" in problems[0]
    assert "subjects[2] (id cat2)" in problems[1] and "--class-noun" in problems[1]
    assert "subjects[3]" in problems[2] and "id must be" in problems[2]
    assert "subjects[4] (id dog)" in problems[3] and "learning_rat" in problems[3]
    assert caught.value.exit_code == 2


def test_bad_defaults_duplicate_ids_and_csv_shape(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("id,instance_data,class_noun\n"
                    "dog,s3://p/dog/,dog\n"
                    "dog,s3://p/dog/,dog\n"
                    "cat,s3://p/cat/,cat,extra\n")
    with pytest.raises(BatchFileError) as caught:
        load_batch(path, {"output": "s3://r/{id}/", "colour": "red"})
    problems = caught.value.problems
    assert any("--set: unknown option 'colour'" in p for p in problems)
    assert any("line 3 (id dog): id 'dog' repeats line 2" in p for p in problems)
    assert any("line 4: more cells" in p for p in problems)


@pytest.mark.parametrize("text,fragment", [
    ("subjects: 3\n", "subjects"),
    ("defaults: {}\nsubject: []\n", "unknown top-level"),
    ("defaults: {}\nsubjects: []\n", "no subjects"),
])
def test_malformed_files(tmp_path, text, fragment):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(Exception) as caught:
        load_batch(path)
    assert fragment in caught.value.message


def test_rows_naming_another_scheme_are_rejected_before_submitting(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dreambooth_job.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    path = tmp_path / "night.yaml"
    path.write_text("""\
defaults: {output: "s3://runs/{id}/"}
subjects:
  - {id: dog, instance_data: "s3://photos/dog/", class_noun: dog}
  - {id: cat, instance_data: "ftp://host/cat/", class_noun: cat}
  - {id: can, instance_data: "s3://photos/can/", class_noun: can, base_model: "gs://models/sd"}
""")
    with pytest.raises(BatchFileError) as caught:
        load_batch(path)
    assert len(caught.value.problems) == 2
    assert "subjects[1] (id cat): --instance-data 'ftp://host/cat/'" in caught.value.problems[0]
    assert "subjects[2] (id can): --base-model 'gs://models/sd'" in caught.value.problems[1]
    result = CliRunner().invoke(main, ["batch", str(path), "--dry-run"])
    assert result.exit_code == 2 and "nothing was submitted" in result.output
