"""Subjects files: formats, defaults, templates, and reporting every bad row at once."""

from __future__ import annotations

import json

import pytest

from dreambooth_job.exit_codes import InvalidInputError
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
    assert dog.max_train_steps == 800 and dog.learning_rate is None  # auto
    assert dog.resolved_learning_rate == 5e-6
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


# --- hostile subjects files ----------------------------------------------------------------------

def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path, overrides=None) -> list[str]:
    with pytest.raises(BatchFileError) as caught:
        load_batch(path, overrides)
    assert caught.value.exit_code == 2
    return caught.value.problems


@pytest.mark.parametrize("noun", ["../tenant-b", "x/../../tenant-b", "..", "a\\b", "dog\n"])
def test_a_class_noun_cannot_lead_a_row_out_of_its_prefix(tmp_path, noun):
    path = write(tmp_path, "b.jsonl", "\n".join(json.dumps(x) for x in [
        {"defaults": {"output": "s3://runs/tenant-a/{id}/",
                      "class_data": "s3://cache/tenant-a/{class_noun}/"}},
        {"id": "dog", "instance_data": "s3://photos/tenant-a/dog/", "class_noun": "dog"},
        {"id": "evil", "instance_data": "s3://photos/tenant-a/x/", "class_noun": noun},
    ]))
    [problem] = problems_of(path)
    assert problem.startswith("line 3 (id evil):") and "--class-data" in problem
    assert "one path segment" in problem or "--class-noun" in problem


def test_ids_and_class_nouns_fill_prompts_freely_but_paths_only_as_one_segment(tmp_path):
    path = write(tmp_path, "b.yaml", """\
defaults: {output: "s3://runs/{id}/", class_prompt: "a photo of a {class_noun}, 1 of 2"}
subjects:
  - {id: plush, instance_data: "s3://photos/plush/", class_noun: "stuffed animal"}
""")
    [plush] = load_batch(path).subjects
    assert plush.class_prompt == "a photo of a stuffed animal, 1 of 2"


RESTRICTED = {
    "DREAMBOOTH_OPERATOR_BATCH_ROW_OPTIONS": "output,learning_rate,class_data,pushgateway",
    "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES": "s3://photos/tenant-a/,s3://runs/tenant-a/",
    "DREAMBOOTH_OPERATOR_ALLOWED_HOSTS": "pushgateway.monitoring.svc",
}


def test_the_operator_limits_options_prefixes_and_hosts_of_every_row(tmp_path, monkeypatch):
    for key, value in RESTRICTED.items():
        monkeypatch.setenv(key, value)
    path = write(tmp_path, "night.yaml", """\
defaults:
  output: "s3://runs/tenant-a/{id}/"
  max_train_steps: 5
  pushgateway: pushgateway.monitoring.svc:9091
subjects:
  - {id: dog, instance_data: "s3://photos/tenant-a/dog/", class_noun: dog, learning_rate: 1.0e-6}
  - {id: cat, instance_data: "s3://photos/tenant-a/cat/", class_noun: cat,
     class_data: "s3://runs/tenant-b/class-cache/"}
  - {id: vase, instance_data: "s3://photos/tenant-a/vase/", class_noun: vase,
     pushgateway: "http://169.254.169.254/latest/"}
  - {id: can, instance_data: "s3://photos/tenant-a/can/", class_noun: can,
     base_model: "s3://models/tenant-b/sd/"}
  - {id: clock, instance_data: "/root/.cache/dreambooth-job/models/", class_noun: clock}
  - {id: teapot, instance_data: "s3://photos/tenant-a/teapot/", class_noun: teapot,
     output: "/root/.cache/dreambooth-job/models/x/"}
""")
    problems = problems_of(path, {"seed": "3"})
    assert len(problems) == 7, problems
    assert "defaults: option 'max_train_steps' may not be set" in problems[0]
    assert "--set: option 'seed' may not be set" in problems[1]
    assert "DREAMBOOTH_OPERATOR_BATCH_ROW_OPTIONS" in problems[0]
    cat, vase, can, clock, teapot = problems[2:]
    assert cat.startswith("subjects[1] (id cat):") and "--class-data s3://runs/tenant-b/" in cat
    assert "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES" in cat
    assert vase.startswith("subjects[2] (id vase):") and "--pushgateway" in vase
    assert "DREAMBOOTH_OPERATOR_ALLOWED_HOSTS" in vase
    assert can.startswith("subjects[3] (id can):") and "'base_model' may not be set" in can
    assert clock.startswith("subjects[4] (id clock):") and "--instance-data /root/" in clock
    assert teapot.startswith("subjects[5] (id teapot):") and "--output /root/" in teapot


def test_rows_within_the_operators_limits_pass(tmp_path, monkeypatch):
    for key, value in RESTRICTED.items():
        monkeypatch.setenv(key, value)
    path = write(tmp_path, "night.yaml", """\
defaults: {output: "s3://runs/tenant-a/{id}/", pushgateway: "http://pushgateway.monitoring.svc:9091"}
subjects:
  - {id: dog, instance_data: "s3://photos/tenant-a/dog/", class_noun: dog, learning_rate: 1.0e-6}
""")
    [dog] = load_batch(path).subjects
    assert dog.learning_rate == 1e-6 and dog.output == "s3://runs/tenant-a/dog/"


def test_without_operator_settings_a_row_may_set_anything(tmp_path, monkeypatch):
    for key in RESTRICTED:
        monkeypatch.delenv(key, raising=False)
    path = write(tmp_path, "b.yaml", """\
subjects:
  - {id: dog, instance_data: "/data/dog", class_noun: dog, output: "/tmp/runs/dog",
     base_model: "s3://models/sd/", pushgateway: "http://169.254.169.254:9091", seed: 3}
""")
    [dog] = load_batch(path).subjects
    assert dog.pushgateway == "http://169.254.169.254:9091" and dog.seed == 3


@pytest.mark.parametrize("name, text, fragment", [
    ("bomb.yaml", "defaults: &d {output: 's3://r/{id}/'}\nsubjects:\n  - *d\n", "aliases"),
    ("deep.yaml", "subjects: " + "[" * 50_000, "nested too deeply"),
    ("list.yaml", "subjects:\n  - {id: dog, instance_data: s3://p/d/, class_noun: [dog], output: /o}\n",
     "class_noun must be a single str"),
    ("noun.yaml", "subjects:\n  - {id: dog, instance_data: s3://p/d/, class_noun: '{x}', output: /o}\n",
     "subjects[0] (id dog): --class-noun must be words without braces"),
    ("ident.yaml", "subjects:\n  - {id: dog, instance_data: s3://p/d/, class_noun: dog, output: /o,"
     ' identifier: "sks\\tdog"}\n', "--identifier must be one word"),
    ("deep.jsonl", "[" * 50_000 + "\n", "line 1: not valid JSON (nested too deeply)"),
])
def test_hostile_subjects_files_exit_2_with_the_reason(tmp_path, name, text, fragment):
    with pytest.raises(InvalidInputError) as caught:
        load_batch(write(tmp_path, name, text))
    assert fragment in caught.value.message
    assert caught.value.exit_code == 2


def test_a_subjects_file_that_is_not_utf8_exits_2_naming_it(tmp_path):
    path = tmp_path / "b.csv"
    data = "id,instance_data,class_noun\ncafe,s3://p/c/,caf\u00e9\n".encode("latin-1")
    path.write_bytes(data)
    with pytest.raises(InvalidInputError) as caught:
        load_batch(path)
    assert caught.value.message == f"subjects file {path} is not UTF-8 text (byte {data.index(0xe9)})"


def test_submit_checks_the_same_prefixes_and_hosts(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dreambooth_job.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))  # --dry-run needs no cluster
    for key, value in RESTRICTED.items():
        monkeypatch.setenv(key, value)
    dog = ["submit", "--instance-data", "s3://photos/tenant-a/dog/", "--class-noun", "dog",
           "--dry-run"]
    allowed = CliRunner().invoke(main, [*dog, "--output", "s3://runs/tenant-a/dog/"])
    assert allowed.exit_code == 0, allowed.output
    refused = CliRunner().invoke(main, [*dog, "--output", "s3://runs/tenant-b/dog/",
                                        "--pushgateway", "169.254.169.254:80"])
    assert refused.exit_code == 2
    [line] = refused.output.strip().splitlines()
    assert "--output s3://runs/tenant-b/dog/" in line and "--pushgateway 169.254.169.254:80" in line


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


# ----------------------------------------------------------------------------------------------
# Issue 23: every option that names a place is under the policy (--vae was not); the pod's own
# options and the operator's ceilings are not a row's to set; ids are bounded.

def test_a_rows_vae_in_another_tenants_prefix_is_refused_like_its_base_model(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES", RESTRICTED[
        "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES"])
    path = write(tmp_path, "night.yaml", """\
defaults: {output: "s3://runs/tenant-a/{id}/"}
subjects:
  - {id: dog, instance_data: "s3://photos/tenant-a/dog/", class_noun: dog,
     vae: "s3://runs/tenant-b/victim/vae/"}
  - {id: cat, instance_data: "s3://photos/tenant-a/cat/", class_noun: cat, vae: "/opt/models/vae"}
""")
    dog, cat = problems_of(path)
    assert dog.startswith("subjects[0] (id dog): --vae s3://runs/tenant-b/victim/vae/")
    assert "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES" in dog
    assert cat.startswith("subjects[1] (id cat): --vae /opt/models/vae")


def test_a_class_noun_cannot_lead_a_rows_vae_out_of_its_prefix(tmp_path):
    path = write(tmp_path, "night.yaml", """\
defaults: {output: "s3://runs/{id}/", vae: "s3://vaes/{class_noun}/"}
subjects:
  - {id: dog, instance_data: "s3://photos/dog/", class_noun: "../tenant-b"}
""")
    [problem] = problems_of(path)
    assert "--vae uses {class_noun}" in problem and "not one path segment" in problem


def test_a_row_may_not_set_what_the_pod_sets(tmp_path):
    path = write(tmp_path, "night.yaml", """\
defaults: {output: "s3://runs/{id}/"}
subjects:
  - {id: dog, instance_data: "s3://photos/dog/", class_noun: dog, cache_dir: /cache/../etc}
""")
    [problem] = problems_of(path)
    assert problem == "subjects[0] (id dog): option 'cache_dir' is set by the pod, not by a subjects file"


@pytest.mark.parametrize("option, value, ceiling", [
    ("termination_grace_seconds", 31536000, "--termination-grace-seconds 31536000 is above the "
                                            "operator's ceiling of 600"),
    ("gradient_accumulation_steps", 1000000, "--gradient-accumulation-steps 1000000 is above the "
                                             "operator's ceiling of 64"),
    ("max_train_steps", 10000000, "--max-train-steps 10000000 is above the operator's ceiling of 100000"),
    ("lora_rank", 512, "--lora-rank 512 is above the operator's ceiling of 128"),
    ("resolution", 4096, "--resolution 4096 is above the operator's ceiling of 2048"),
])
def test_a_row_above_an_operator_ceiling_is_refused_naming_it(tmp_path, option, value, ceiling):
    path = write(tmp_path, "night.yaml", f"""\
defaults: {{output: "s3://runs/{{id}}/"}}
subjects:
  - {{id: dog, instance_data: "s3://photos/dog/", class_noun: dog, {option}: {value}}}
""")
    [problem] = problems_of(path)
    assert problem.startswith("subjects[0] (id dog): ") and ceiling in problem
    assert "DREAMBOOTH_OPERATOR_MAX_" in problem


def test_the_operators_ceiling_comes_from_its_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_MAX_TRAIN_STEPS", "1000")
    path = write(tmp_path, "night.yaml", """\
defaults: {output: "s3://runs/{id}/"}
subjects:
  - {id: dog, instance_data: "s3://photos/dog/", class_noun: dog, max_train_steps: 1000}
  - {id: cat, instance_data: "s3://photos/cat/", class_noun: cat, max_train_steps: 1001}
""")
    [problem] = problems_of(path)
    assert problem.startswith("subjects[1] (id cat): --max-train-steps 1001 is above the operator's "
                              "ceiling of 1000 (DREAMBOOTH_OPERATOR_MAX_TRAIN_STEPS)")


@pytest.mark.parametrize("key, fragment", [
    ("job_id", "--job-id must be at most 128 characters, got 1000000"),
    ("id", "id must be 1-63 letters"),
    ("class_noun", "--class-noun must be at most 64 characters, got 1000000"),
    ("instance_prompt", "--instance-prompt must be at most 1000 characters, got 1000000"),
])
def test_a_megabyte_string_in_a_row_is_refused_in_a_short_line(tmp_path, key, fragment):
    row = {"id": "dog", "instance_data": "s3://photos/dog/", "class_noun": "dog",
           key: "{identifier}" + "x" * (1_000_000 - len("{identifier}"))}
    path = tmp_path / "night.jsonl"
    path.write_text(json.dumps({"defaults": {"output": "s3://runs/{id}/"}}) + "\n" + json.dumps(row))
    [problem] = problems_of(path)
    assert fragment in problem and len(problem) < 300


def test_too_many_validation_prompts_are_refused(tmp_path):
    row = {"id": "dog", "instance_data": "s3://photos/dog/", "class_noun": "dog",
           "validation_prompts": ["a {identifier} {class_noun}"] * 33}
    path = tmp_path / "night.jsonl"
    path.write_text(json.dumps({"defaults": {"output": "s3://runs/{id}/"}}) + "\n" + json.dumps(row))
    [problem] = problems_of(path)
    assert "--validation-prompt takes at most 32 values, got 33" in problem
