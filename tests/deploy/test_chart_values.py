"""The chart's `job:` values against the package's one typed config, so that the two cannot drift."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_support import (
    CHART,
    REPO,
    assert_same,
    comparable,
    options_of,
    parse_train_args,
    spec_from_values,
)

from dreambooth_job.config import field_types, introspection
from dreambooth_job.config import train_config as cfg
from dreambooth_job.config.option_fields import accepted_choices
from dreambooth_job.config.sources import stated_when
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.manifest import (
    RESOLVED_OPTIONS,
    SUBJECT_LABEL,
    JobSpec,
    build_job,
    label_value,
    resolved_options,
    subject_of,
    values_key,
)
from dreambooth_job.k8s.pod import OPTIONS_SET_BY_THE_POD
from dreambooth_job.training import sizing

SPECIAL_VALUES = {
    "instance_data": "s3://photos/Some Dog/",
    "output": "s3://runs/some-dog/",
    "class_noun": "dog",
    "subject_id": "dog_42",
    "batch_id": "night-42",
    "identifier": "sks",
    "instance_prompt": "a photo of {identifier} {class_noun}",
    "learning_rate": 2e-06,  # Go writes it 0.000002: the CLI must read both
    "lora_dropout": 0.25,
    "caption_dropout": 0.25,  # a probability: at most 1
    "noise_offset": 0.1,  # within its bound of 1
    "mode_scale": 1.0,  # within [-1, 1.75]
    "ema_decay": 0.999,  # below 1
    # At its default here: fp8/nf4 refuse --lora-merge, which this config sets (the test below
    # renders a quantized base alone).
    "base_precision": "auto",
    # At its default too: dora refuses --train-text-encoder and lokr --lora-dropout, which this
    # config sets.
    "lora_variant": "lora",
    "lora_target_modules": ["to_q", "conv1"],
    "pushgateway": "http://pushgateway:9091",
    "notify_url": "https://hooks.example/dreambooth?subject=dog",
    "notify_secret_env": "NOTIFY_SIGNING_KEY",
    "validation_prompts": ['a {identifier} {class_noun}, "quoted", with: colons', "{identifier}"],
}


def load_sync_script():
    spec = importlib.util.spec_from_file_location("sync_chart", REPO / "helm" / "sync_chart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def non_default(f) -> Any:
    """A valid value of field `f` that differs from its default."""
    default = field_types.default_of(f)
    if f.name in SPECIAL_VALUES:
        return SPECIAL_VALUES[f.name]
    if f.metadata["choices"]:
        return next(c for c in f.metadata["choices"] if c != default)
    kind = introspection.base_type(f)
    if kind is bool:
        return True if default is None else not default
    if kind is int:
        return (default or 0) + 8  # keeps --resolution (auto: None) a multiple of 8
    if kind is float:
        return (default or 0) + 1.5
    return f"{f.name.replace('_', '-')}-value"


def chart_fields():
    return [f for f in introspection.fields() if f.name not in OPTIONS_SET_BY_THE_POD]


def test_generated_chart_files_are_up_to_date():
    stale = [path.relative_to(REPO) for path, text in load_sync_script().expected_files().items()
             if path.read_text() != text]
    assert not stale, f"out of date: {stale}; run .venv/bin/python helm/sync_chart.py"


def test_every_option_is_reachable_and_every_key_is_an_option(chart):
    keys = set(chart.values["job"])
    fields = {values_key(f.name): f.name for f in introspection.fields()}
    assert keys <= fields.keys(), f"not TrainConfig fields: {keys - fields.keys()}"
    unreachable = {name for key, name in fields.items() if key not in keys} - OPTIONS_SET_BY_THE_POD
    assert not unreachable


def test_values_defaults_are_the_cli_defaults(chart):
    values = chart.values["job"]
    for f in chart_fields():
        default = field_types.default_of(f)
        assert values.get(values_key(f.name)) == default, f.name


def test_schema_types_and_choices_are_the_configs(chart):
    job = chart.schema["properties"]["job"]
    assert job["additionalProperties"] is False
    # Required only when training (mode: train, the default); `mode: generate` requires generate's.
    required = chart.schema["allOf"][0]["else"]["properties"]["job"]["required"]
    assert set(required) == {values_key(f.name) for f in introspection.fields() if f.metadata["required"]}
    json_type = {str: "string", int: "integer", float: "number", bool: "boolean"}
    for f in chart_fields():
        prop = job["properties"][values_key(f.name)]
        kind = json_type[introspection.base_type(f)]
        if introspection.is_list(f):
            assert prop["type"] == "array" and prop["items"]["type"] == kind
        else:
            assert kind == prop["type"] or kind in prop["type"], f.name
        assert prop.get("enum") == (list(accepted_choices(f)) if f.metadata["choices"] else None)


@pytest.mark.parametrize("f", [f for f in chart_fields() if introspection.base_type(f) in (int, float)],
                         ids=lambda f: f.name)
def test_schema_bounds_agree_with_the_configs_validation(chart, f):
    # Probed with prior preservation off: its num_class_images >= 1 rule spans two options,
    # which a per-key schema cannot say; the job still enforces it at start.
    prop = chart.schema["properties"]["job"]["properties"][values_key(f.name)]
    for value in (-1, 0, 1, 7, 8, 65535, 65536):
        try:
            cfg.TrainConfig(prior_preservation=False, **{f.name: value})
            accepted = True
        except InvalidInputError:
            accepted = False
        assert jsonschema.Draft7Validator(prop).is_valid(value) == accepted, (f.name, value)


def test_values_yaml_documents_every_key():
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if key:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#"), f"values.yaml:{i + 1} {key.group(2)} has no comment above it"


def test_every_option_renders_into_args_the_cli_parses_back(render):
    intended = cfg.TrainConfig(**{f.name: non_default(f) for f in chart_fields()})
    rendered = render({"job": {values_key(f.name): non_default(f) for f in chart_fields()}})
    job = rendered.one("Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert options_of(parse_train_args(args)) == options_of(intended)
    assert_same(comparable(build_job(spec_from_values(rendered.values))), comparable(job))


def test_a_quantized_base_renders_into_args_the_cli_parses_back(render, chart):
    values = {"job": {**chart.values["job"], "instanceData": "s3://p/x/", "classNoun": "dog",
                      "output": "s3://r/x/", "trainMode": "lora", "basePrecision": "nf4"}}
    args = render(values).one("Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--base-precision") + 1] == "nf4"
    assert parse_train_args(args).base_precision == "nf4"


def stated_options(args: list[str]) -> set[str]:
    """The fields a `train` command line states, by their flags."""
    by_flag = {}
    for f in introspection.fields():
        declared = f.metadata["flag"] or field_types.flag_name(f.name)
        if introspection.base_type(f) is bool and not f.metadata["flag"]:
            declared += f"/--no-{f.name.replace('_', '-')}"
        by_flag.update(dict.fromkeys(declared.split("/"), f.name))
    return {by_flag[a] for a in args if a in by_flag}


def test_a_job_at_the_defaults_states_every_model_option_and_no_other(render, chart):
    """A pod whose image has other defaults still trains what the chart's values say."""
    values = {"job": {**chart.values["job"], "instanceData": "s3://p/x/", "classNoun": "dog",
                      "output": "s3://r/x/"}}
    args = render(values).one("Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    model = {f.name for f in introspection.model_fields()} - {"vae"}  # unset: the base model's own VAE
    # Always passed: the output, the subject id and the SIGTERM budget the pod was sized for.
    assert stated_options(args) == model | {"output", "subject_id", "termination_grace_seconds"}
    # Options the run resolves are stated as `auto`, with what they depend on.
    assert args[args.index("--resolution") + 1] == "auto"
    assert args[args.index("--train-mode") + 1] == "full"
    assert args[args.index("--learning-rate") + 1] == "auto"
    assert args[args.index("--lora-alpha") + 1] == "auto"
    assert args[args.index("--mixed-precision") + 1] == "auto"
    assert parse_train_args(args).to_dict() == {**cfg.TrainConfig(
        instance_data="s3://p/x/", class_noun="dog", output="s3://r/x/", subject_id="x").to_dict(),
        "cache_dir": parse_train_args(args).cache_dir,
        "termination_grace_seconds": sizing.PROFILES[sizing.UNDETECTED["full"]].job_grace_seconds}


def test_the_python_builder_states_every_model_option_at_its_default():
    job = build_job(JobSpec(train=cfg.TrainConfig(instance_data="s3://p/x/", class_noun="dog",
                                                  output="s3://r/x/")))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    unset_means_none = {"vae"}  # the base model's own VAE
    assert stated_options(args) == ({f.name for f in introspection.model_fields()} - unset_means_none
                                    | {"output", "subject_id", "termination_grace_seconds"})
    assert parse_train_args(args).learning_rate == cfg.TrainConfig().learning_rate


def test_schema_bounds_are_the_fields_declared_bounds(chart):
    """values.schema.json states each option's bounds exactly as TrainConfig declares them."""
    bound_keywords = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
                      "pattern", "minLength", "maxLength", "maxItems"}
    properties = chart.schema["properties"]["job"]["properties"]
    for f in chart_fields():
        declared = dict(f.metadata["bounds"])
        text = {}
        if f.metadata["must_contain"]:
            text["pattern"] = re.escape(f.metadata["must_contain"])
        if f.metadata["pattern"]:
            text["pattern"] = f"^{f.metadata['pattern'][0]}$"
        if f.metadata["required"]:
            text["minLength"] = 1
        if f.metadata["max_length"]:
            text["maxLength"] = f.metadata["max_length"]
        prop = properties[values_key(f.name)]
        if f.metadata["max_items"]:
            declared["maxItems"] = f.metadata["max_items"]
            assert {k: v for k, v in prop["items"].items() if k in bound_keywords} == text, f.name
        else:
            declared.update(text)
        in_schema = {k: v for k, v in prop.items() if k in bound_keywords}
        assert in_schema == declared, f.name
    assert properties["resolution"]["multipleOf"] == 8 and properties["learningRate"]["exclusiveMinimum"] == 0


@pytest.mark.parametrize("instance_data", [
    "s3://photos/dog-42/", "s3://photos/dog-42//", "s3://photos/Some Dog!/", "/data/cat",
    "s3://bucket", "s3://photos/_x_/", "s3://photos/!!!/", "s3://p/" + "long-" * 20, "///",
    "dog-42", "/data/a b/c d//", "s3://photos/caf\u00e9/"])
def test_subject_derivation_matches_the_python_builder(render, instance_data):
    job = render({"job": {"instanceData": instance_data, "classNoun": "dog",
                          "output": "s3://r/x/"}}).one("Job")
    subject = subject_of(cfg.TrainConfig(instance_data=instance_data))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--subject-id") + 1] == subject
    assert job["metadata"]["labels"][SUBJECT_LABEL] == label_value(subject)


def test_the_chart_states_each_option_when_the_python_builder_does():
    """The args template holds no rule of its own: when to state an option is config_sources'
    stated_when, and the options build_job resolves name the template that resolves them."""
    package = yaml.safe_load((CHART / "files" / "package.yaml").read_text())
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    by_key = {values_key(f.name): f for f in introspection.fields()}
    for option in package["options"]:
        assert option["stated"] == stated_when(by_key[option["key"]]), option["key"]
    resolved = {option["key"]: option["resolvedBy"] for option in package["options"]
                if "resolvedBy" in option}
    assert resolved == {values_key(name): template for name, template in RESOLVED_OPTIONS.items()}
    assert set(RESOLVED_OPTIONS) == set(resolved_options(cfg.TrainConfig(), ClusterSettings()))
    for template in RESOLVED_OPTIONS.values():
        assert f'{{{{- define "{template}" -}}}}' in helpers
