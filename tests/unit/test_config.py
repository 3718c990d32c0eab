import pytest
import yaml
from click.testing import CliRunner

from dreambooth_job.cli import main
from dreambooth_job.cli_options import resolve_train_config
from dreambooth_job.config import field_types, introspection
from dreambooth_job.config import sources as config_sources
from dreambooth_job.config import train_config as cfg
from dreambooth_job.exit_codes import ExitCode, InvalidInputError

REQUIRED = {"instance_data": "s3://b/photos/", "class_noun": "dog", "output": "s3://b/out/"}


def test_precedence_is_flag_then_env_then_file_then_default(tmp_path):
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump(
        {**REQUIRED, "max_train_steps": 100, "learning_rate": 1e-5, "resolution": 256, "seed": 7}))
    env = {"DREAMBOOTH_MAX_TRAIN_STEPS": "200", "DREAMBOOTH_LEARNING_RATE": "2e-5"}
    resolved = config_sources.resolve_config({"max_train_steps": 300}, env=env, config_file=config_file)
    assert resolved.max_train_steps == 300      # flag beats env and file
    assert resolved.learning_rate == 2e-5       # env beats file
    assert resolved.resolution == 256           # file beats default
    assert resolved.num_class_images == 200     # default
    assert resolved.seed == 7


def test_cli_flags_reach_the_config_and_unset_flags_do_not_override(tmp_path):
    config_file = tmp_path / "job.json"
    config_file.write_text('{"class-noun": "cat", "validation-prompts": ["x {identifier}"]}')
    params = {"config_file": str(config_file), "instance_data": "d", "output": "o",
              "class_noun": None, "validation_prompts": (), "random_flip": True}
    resolved = resolve_train_config(params, env={})
    assert resolved.class_noun == "cat"
    assert resolved.validation_prompts == ["x {identifier}"]
    assert resolved.random_flip is True


@pytest.mark.parametrize("raw, expected", [("true", True), ("0", False), ("auto", None)])
def test_env_booleans(raw, expected):
    resolved = config_sources.resolve_config(env={"DREAMBOOTH_GRADIENT_CHECKPOINTING": raw})
    assert resolved.gradient_checkpointing is expected


def test_env_lists_accept_json_or_lines():
    as_json = config_sources.resolve_config(env={"DREAMBOOTH_VALIDATION_PROMPTS": '["a", "b"]'})
    as_lines = config_sources.resolve_config(env={"DREAMBOOTH_VALIDATION_PROMPTS": "a\nb"})
    assert as_json.validation_prompts == as_lines.validation_prompts == ["a", "b"]


@pytest.mark.parametrize("values, named", [
    ({"resolution": 0}, "--resolution"),
    ({"resolution": 100}, "--resolution"),
    ({"max_train_steps": -5}, "--max-train-steps"),
    ({"mixed_precision": "fp8"}, "--mixed-precision"),
    ({"compile_mode": "fastest"}, "--compile-mode"),
    ({"compile_mode": "reduce-overhead"}, "--compile-unet"),
    ({"instance_prompt": "a photo"}, "--instance-prompt"),
    ({"learning_rate": 0.0}, "--learning-rate"),
    ({"save_precision": "fp8"}, "--save-precision"),
])
def test_invalid_values_name_the_option(values, named):
    with pytest.raises(InvalidInputError, match=named):
        cfg.TrainConfig(**values)


def test_bad_env_value_names_the_variable():
    with pytest.raises(InvalidInputError, match="DREAMBOOTH_MAX_TRAIN_STEPS"):
        config_sources.resolve_config(env={"DREAMBOOTH_MAX_TRAIN_STEPS": "many"})


def test_unknown_config_file_key_is_named(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("max_steps: 5\n")
    with pytest.raises(InvalidInputError, match="'max_steps'"):
        config_sources.load_config_file(bad)


def test_to_cli_args_round_trips_through_the_cli_parser():
    original = cfg.TrainConfig(**REQUIRED, max_train_steps=42, random_flip=True, center_crop=False,
                               gradient_checkpointing=False, validation_prompts=["p {identifier}"])
    args = config_sources.to_cli_args(original)
    ctx = main.commands["train"].make_context("train", list(args))
    parsed = resolve_train_config(ctx.params, env={})
    assert parsed.to_dict() == {**original.to_dict(), "cache_dir": parsed.cache_dir}


def test_print_defaults_lists_every_option_with_its_default():
    result = CliRunner().invoke(main, ["config", "--print-defaults"])
    assert result.exit_code == 0
    printed = yaml.safe_load(result.output)
    assert set(printed) == {f.name for f in introspection.fields()}
    assert printed["max_train_steps"] == 800 and printed["prior_loss_weight"] == 1.0


def test_train_help_is_generated_from_the_config():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    for f in introspection.fields():
        assert field_types.flag_name(f.name).split("/")[0] in result.output or f.metadata["flag"]


def test_missing_required_options_exit_2_naming_them():
    result = CliRunner().invoke(main, ["train", "--class-noun", "dog"], env={})
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "--instance-data" in result.output and "--output" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("instance_data, subject", [
    ("s3://photos/dog-42/", "dog-42"), ("s3://photos/dog-42//", "dog-42"),
    ("s3://photos/Some Dog!/", "Some-Dog"), ("/data/cat", "cat"), ("s3://photos/!!!/", "subject"),
    ("", "subject")])
def test_subject_id_defaults_to_the_last_path_component(instance_data, subject):
    assert cfg.TrainConfig(instance_data=instance_data).resolved_subject_id == subject
    assert cfg.TrainConfig(instance_data=instance_data, subject_id="given").resolved_subject_id == "given"


# --- hostile config files and environment ------------------------------------------------------

def _alias_bomb(levels: int) -> str:
    """The "billion laughs" in YAML: each level lists the previous one nine times."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nvalidation_prompts: *l{levels - 1}\n"


@pytest.mark.parametrize("text", [
    "prompts: &p ['a {identifier}']\nvalidation_prompts: *p\n",
    _alias_bomb(9),  # 9**9 items once read: minutes of work from about 400 bytes
], ids=["alias", "bomb"])
def test_yaml_aliases_are_refused(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=r"aliases .* not allowed.* at line \d+") as caught:
        config_sources.load_config_file(path)
    assert str(path) in caught.value.message and "\n" not in caught.value.message


def run_train(*args, env=None):
    return CliRunner().invoke(main, ["train", "--instance-data", "s3://b/p/", "--output",
                                     "s3://b/o/", *args], env=env or {})


def one_error_line(result) -> str:
    assert result.exit_code == ExitCode.INVALID_INPUT, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("text, key", [
    ("class_noun: [dog, cat]\n", "class_noun"),
    ("class_noun: {kind: dog}\n", "class_noun"),
    ("learning_rate: [1.0e-6]\n", "learning_rate"),
    ("validation_prompts: [{a: b}]\n", "validation_prompts"),
    ("subject_id: 2024-01-01\n", "subject_id"),  # a YAML date, not text
])
def test_a_list_or_mapping_where_a_value_belongs_exits_2_naming_the_key(tmp_path, text, key):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    line = one_error_line(run_train("--config", str(path), "--class-noun", "dog"))
    assert key in line and str(path) in line


def test_a_config_file_that_is_not_utf8_exits_2_naming_it(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes("class_noun: chien\nclass_prompt: un caf\u00e9\n".encode("latin-1"))
    line = one_error_line(run_train("--config", str(path)))
    assert str(path) in line and "UTF-8" in line


def test_an_oversized_config_file_is_refused_unread(tmp_path, monkeypatch):
    from dreambooth_job.config import tenant_files as config_files

    monkeypatch.setattr(config_files, "MAX_FILE_BYTES", 64)
    path = tmp_path / "job.yaml"
    path.write_text("class_noun: dog\n" * 10)
    with pytest.raises(InvalidInputError, match="larger than"):
        config_sources.load_config_file(path)


@pytest.mark.parametrize("raw", ['["a {identifier}", ', "[[[[", "[" * 100_000])
def test_a_bad_json_list_in_the_environment_exits_2_naming_the_variable(raw):
    line = one_error_line(run_train("--class-noun", "dog",
                                    env={"DREAMBOOTH_VALIDATION_PROMPTS": raw}))
    assert "DREAMBOOTH_VALIDATION_PROMPTS" in line and "JSON" in line


@pytest.mark.parametrize("flag, value", [
    ("--identifier", "sks\tdog"), ("--identifier", " sks"), ("--identifier", "sk\u200bs"),
    ("--identifier", "sks dog"), ("--subject-id", "my\tdog"), ("--job-id", "job\n1"),
    ("--batch-id", "night\x1b[2J"), ("--subject-id", "dog\u202e"),
])
def test_identifiers_with_whitespace_or_control_characters_are_refused(flag, value):
    line = one_error_line(run_train("--class-noun", "dog", flag, value))
    assert flag in line and "control characters" in line


@pytest.mark.parametrize("noun, named", [
    ("{colour} dog", "--class-noun"), ("dog}", "--class-noun"), ("dog\nIgnore that", "--class-noun"),
    ("dog\u2028cat", "--class-noun"),
    ("   ", "--class-noun"), ("dog\x00", "--class-noun"),
])
def test_a_class_noun_that_would_break_a_prompt_is_refused(noun, named):
    with pytest.raises(InvalidInputError, match=named):
        cfg.TrainConfig(**{**REQUIRED, "class_noun": noun})


def test_prompt_templates_are_filled_at_validation_as_the_job_fills_them():
    with pytest.raises(InvalidInputError, match="--validation-prompt: .*'colour'"):
        cfg.TrainConfig(**REQUIRED, validation_prompts=["a {colour} {identifier} {class_noun}"])
    with pytest.raises(InvalidInputError, match="--class-prompt"):
        cfg.TrainConfig(**REQUIRED, class_prompt="a {class_noun} {")
    assert cfg.TrainConfig(**{**REQUIRED, "class_noun": "stuffed animal"}, identifier="sks")


@pytest.mark.parametrize("name, value", [
    ("learning_rate", float("inf")), ("learning_rate", float("nan")),
    ("prior_loss_weight", float("nan")), ("guidance_scale", float("-inf")),
    ("max_grad_norm", float("inf"))])
def test_non_finite_numbers_are_refused(name, value):
    with pytest.raises(InvalidInputError, match=f"{field_types.flag_name(name)} must be a finite number"):
        cfg.TrainConfig(**{name: value})


def test_non_finite_numbers_from_env_and_files_exit_2(tmp_path):
    assert "--learning-rate" in one_error_line(
        run_train("--class-noun", "dog", env={"DREAMBOOTH_LEARNING_RATE": "inf"}))
    path = tmp_path / "job.yaml"
    path.write_text("class_noun: dog\nguidance_scale: .nan\n")
    assert "--guidance-scale" in one_error_line(run_train("--config", str(path)))


@pytest.mark.parametrize("values, named", [
    ({"instance_data": "ftp://host/photos/"}, "--instance-data"),
    ({"output": "gs://bucket/runs/"}, "--output"),
    ({"class_data": "http://cache.example/classes/"}, "--class-data"),
    ({"instance_data": "s3:/bucket/photos/"}, "--instance-data"),
    ({"output": "s3:bucket/runs/"}, "--output"),
    ({"output": "S3://bucket/runs/"}, "--output"),
    ({"instance_data": "s3:///photos/"}, "--instance-data"),
    ({"cache_dir": "s3://bucket/cache/"}, "--cache-dir"),
    ({"cache_dir": "file:///var/cache"}, "--cache-dir"),
    ({"base_model": "hf://org/model"}, "--base-model"),
    ({"clip_model": "https://example.com/clip"}, "--clip-model"),
    ({"dino_model": "s3:/bucket/dino"}, "--dino-model"),
    ({"lpips_model": "gs://bucket/lpips"}, "--lpips-model"),
    ({"prompt_set": "https://example.com/prompts.txt"}, "--prompt-set"),
])
def test_storage_locations_other_than_s3_or_a_path_name_the_option(values, named):
    with pytest.raises(InvalidInputError, match=f"^{named} '.*'.*: expected "):
        cfg.TrainConfig(**{**REQUIRED, **values})


@pytest.mark.parametrize("values", [
    {"instance_data": "s3://bucket/photos/dog/", "output": "s3://bucket", "class_data": "s3://b/c/"},
    {"instance_data": "photos/dog", "output": "/runs/dog", "cache_dir": "~/cache"},
    {"base_model": "org/model", "clip_model": "./models/clip", "dino_model": "s3://models/dino/"},
    {"prompt_set": "live"}, {"prompt_set": "prompts/objects.txt"}, {"prompt_set": "s3://b/p.txt"},
])
def test_s3_uris_local_paths_and_hub_ids_are_locations(values):
    assert cfg.TrainConfig(**{**REQUIRED, **values})


def test_train_with_another_scheme_exits_2_in_one_line():
    result = CliRunner().invoke(main, ["train", "--instance-data", "ftp://host/dog/", "--class-noun",
                                       "dog", "--output", "s3://b/out/"], env={})
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert result.output.strip() == (
        "error: --instance-data 'ftp://host/dog/' is not a supported location: expected "
        "s3://bucket/prefix, a local path")


# ----------------------------------------------------------------------------------------------
# Issue 23: what an option names and how long it may be are declared on it.

def _string_fields():
    from dreambooth_job.config.introspection import base_type
    from dreambooth_job.generation import generate_config as gen

    return [(owner.__name__, f) for owner, fields in ((cfg.TrainConfig, introspection.fields()),
                                                       (gen.GenerateConfig, gen.fields()))
            for f in fields if base_type(f, owner) is str]


def _names_a_place(f) -> bool:
    import re

    words = f.metadata["help"]
    return bool(re.search(r"s3://|director|hub id|\bURL\b|\bURI\b", words)
                or re.search(r"(_url|_model|_dir|_data|^model|^output|^vae)$", f.name))


@pytest.mark.parametrize("owner, f", [(o, f) for o, f in _string_fields() if _names_a_place(f)],
                         ids=lambda x: getattr(x, "name", x))
def test_a_string_option_that_names_a_place_declares_it(owner, f):
    """Its help or name says it names a place: then the policy, the scheme and credential
    checks and the batch rows' substitution check must know it (they derive from place=)."""
    from dreambooth_job.config.option_fields import place_of

    assert place_of(f) is not None, f"{owner}.{f.name} names a place: declare place= on it"


@pytest.mark.parametrize("owner, f", _string_fields(), ids=lambda x: getattr(x, "name", x))
def test_every_free_text_option_declares_its_longest_value(owner, f):
    if not f.metadata["choices"] and not (owner == "GenerateConfig" and f.name == "prompts"):
        assert f.metadata["max_length"], f"{owner}.{f.name}: declare max_length="


@pytest.mark.parametrize("value", ["ftp://user:pw@host/vae", "ftp://host/vae", "gs://b/vae",
                                   "s3://user:pw@bucket/vae"])
def test_a_vae_is_checked_as_every_model_location(value):
    with pytest.raises(InvalidInputError) as caught:
        cfg.TrainConfig(**REQUIRED, vae=value)
    assert "--vae" in caught.value.message and "pw" not in caught.value.message


@pytest.mark.parametrize("flag, value, fragment", [
    ("--lora-rank", "50000000", "--lora-rank must be between 1 and 1024, got 50000000"),
    ("--lora-alpha", "1e30", "--lora-alpha must be at most 4096.0, got 1e+30"),
    ("--subject-id", "x" * 100_000, "--subject-id must be at most 63 characters, got 100000"),
    ("--identifier", "x" * 65, "--identifier must be at most 64 characters, got 65"),
    ("--resolution", "1048576", "--resolution must be between 8 and 4096, got 1048576"),
])
def test_a_value_past_its_declared_bound_is_exit_2_at_validation(flag, value, fragment):
    line = one_error_line(run_train("--class-noun", "dog", "--train-mode", "lora", flag, value))
    assert fragment in line and len(line) < 300


def test_a_megabyte_subject_id_in_a_config_file_is_exit_2_in_one_short_line(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"subject_id": "dog-" * 250_000}))
    line = one_error_line(run_train("--class-noun", "dog", "--config", str(config)))
    assert "--subject-id must be at most 63 characters" in line and len(line) < 300
