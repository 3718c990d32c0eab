"""The generate Job: the Python builder (names, args, validity) and the chart's `mode: generate`,
which must render the same Job and need none of the training values."""

from __future__ import annotations

import itertools
import re

import helm_python as helm
import pytest
import yaml
from deploy_support import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    assert_same,
    comparable,
    kubelet_expanded,
    spec_from_values,
    validate_object,
)

from dreambooth_job import cli
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.generation import generate_config as gen
from dreambooth_job.generation.generate_config import GenerateConfig
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.generate_job import (
    MODE_LABEL,
    GenerateJobSpec,
    build_generate_job,
    generate_job_name,
)
from dreambooth_job.k8s.manifest import SUBJECT_LABEL, JobSpec, build_job, job_name, values_key

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
GENERATE = {"model": "s3://runs/dog-42/", "output": "s3://generated/dog-42/"}
SECRET_PROMPT = "a {identifier} {class_noun} $(AWS_SECRET_ACCESS_KEY) $$ $5"


def args_of(job: dict) -> list[str]:
    return job["spec"]["template"]["spec"]["containers"][0]["args"]


def parse_generate_args(args: list[str]) -> GenerateConfig:
    """What `dreambooth-job <args>` would generate: the package's own click parser."""
    assert args[0] == "generate", args
    command = cli.main.get_command(None, "generate")
    return gen.resolve(command.make_context("generate", list(args[1:])).params)


def without_cache_dir(config: GenerateConfig) -> dict:
    return {k: v for k, v in vars(config).items() if k != "cache_dir"}


# --- names ------------------------------------------------------------------------------------

IDS = ["dog-42", "Dog_42", "dog-42-generate", "x-generate-g", "lora", "model", "0123abcd",
       "dog-42-generate-g0123abcd", "ünï/côdé", "x" * 120, "", "-"]


def test_generate_job_names_never_take_a_training_jobs_name():
    training = {job_name(subject, batch) for subject, batch in itertools.product(IDS, [None, *IDS])}
    generating = {generate_job_name(f"s3://runs/{a}/{suffix}", f"s3://gen/{b}/")
                  for a, b in itertools.product(IDS, IDS) for suffix in ("", "model/", "lora/")}
    assert not training & generating
    # By construction, not by luck: the last part of a training name is 8 hex digits; of a
    # generate name, `g` and 8 hex digits.
    assert all(re.fullmatch(r"(.*-)?[0-9a-f]{8}", n) for n in training)
    assert all(re.fullmatch(r"(.*-)?g[0-9a-f]{8}", n) for n in generating)
    assert all(re.match(DNS_LABEL, n) and len(n) <= 63 for n in generating | training)


def test_generate_job_name_is_readable_and_a_function_of_model_and_output():
    name = generate_job_name("s3://runs/dog-42/lora/", "s3://gen/a/")
    assert name.startswith("dog-42-generate-g") and name == generate_job_name("s3://runs/dog-42/lora/",
                                                                             "s3://gen/a/")
    assert name != generate_job_name("s3://runs/dog-42/lora/", "s3://gen/b/")
    assert name != generate_job_name("s3://runs/dog-42/", "s3://gen/a/")


# --- the Python builder -----------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_the_generate_job_is_valid_kubernetes(version):
    job = build_generate_job(GenerateJobSpec(generate=GenerateConfig(**GENERATE)))
    validate_object(job, version)
    assert job["metadata"]["labels"][MODE_LABEL] == "generate"
    assert SUBJECT_LABEL not in job["metadata"]["labels"]
    assert {int(c) for c in job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"]} == {
        int(ExitCode.INVALID_INPUT)}  # the training Job's exit codes
    assert "ports" not in job["spec"]["template"]["spec"]["containers"][0]  # no metrics server


def test_generate_args_parse_back_into_the_config_and_never_expand_env_vars():
    config = GenerateConfig(**GENERATE, prompts=[SECRET_PROMPT, "a {class_noun}"], num_images=3,
                            seed=11, sampler="ddim", steps=30, guidance_scale=4.5, resolution=512,
                            batch_size=2, log_format="text")
    args = args_of(build_generate_job(GenerateJobSpec(generate=config)))
    assert "$(AWS_SECRET_ACCESS_KEY)" not in " ".join(args).replace("$$(", "")
    assert without_cache_dir(parse_generate_args(kubelet_expanded(args))) == without_cache_dir(config)
    # Unset `auto` options are stated as `auto`: an image with other defaults draws the same.
    default = args_of(build_generate_job(GenerateJobSpec(generate=GenerateConfig(**GENERATE))))
    assert default[default.index("--resolution") + 1] == "auto"
    assert {f.metadata["flag"] or "--" + f.name.replace("_", "-") for f in gen.fields()
            if f.name not in gen.SET_BY_THE_POD} <= set(default)


@pytest.mark.parametrize("options, match", [
    ({}, "missing required option"),
    ({**GENERATE, "num_images": 0}, "--num-images"),
    ({**GENERATE, "prompts": []}, "--prompt"),
    ({**GENERATE, "prompts": ["a {identifier.__class__}"]}, "placeholder"),
    ({**GENERATE, "output": "gs://bucket/x"}, "--output"),
    ({**GENERATE, "model": "s3://key:secret@runs/x/"}, "credentials"),
    ({**GENERATE, "resolution": 100}, "--resolution"),
])
def test_bad_generate_options_are_invalid_input(options, match):
    with pytest.raises(InvalidInputError, match=match):
        build_generate_job(GenerateJobSpec(generate=GenerateConfig(**options)))


# --- the chart's mode: generate ---------------------------------------------------------------

def generate_values(**generate) -> dict:
    return {"mode": "generate", "generate": {**GENERATE, **generate}}


def python_job(values: dict) -> dict:
    """The Python builder's Job for the same merged chart values."""
    spec = spec_from_values(values)
    keys = {values_key(f.name): f.name for f in gen.fields()}
    config = GenerateConfig(**{keys[k]: v for k, v in values["generate"].items() if v is not None})
    return build_generate_job(GenerateJobSpec(generate=config, cluster=spec.cluster, name=spec.name,
                                              extra_args=spec.extra_args))


@pytest.mark.parametrize("values", [
    generate_values(),
    {**generate_values(prompts=[SECRET_PROMPT, "b"], numImages=2, seed=3, sampler="euler",
                       steps=10, guidanceScale=5, resolution=256, batchSize=1, logFormat="json"),
     "extraArgs": ["--new-flag", "x"], "labels": {"team": "vision"}, "gpu": {"count": 0},
     "s3": {"credentialsSecret": "s3-keys", "region": "eu-west-1"}},
], ids=["defaults", "every-option"])
def test_chart_generate_mode_is_the_python_builders_job(render, values):
    rendered = render(values)
    job = rendered.one("Job")
    for version in KUBE_VERSIONS:
        validate_object(job, version)
    assert_same(comparable(python_job(rendered.values)), comparable(job))
    assert job["metadata"]["name"] == RELEASE and "generates" in rendered.notes
    args = kubelet_expanded(args_of(job))
    args = args[:len(args) - len(values.get("extraArgs", []))]
    keys = {values_key(f.name): f.name for f in gen.fields()}
    intended = GenerateConfig(**{keys[k]: v for k, v in values["generate"].items()})
    assert without_cache_dir(parse_generate_args(args)) == without_cache_dir(intended)


def test_chart_generate_mode_needs_no_training_values_and_lints_clean(chart):
    chart.render(generate_values(), name=RELEASE, namespace=NAMESPACE, is_install=True)
    report = helm.lint(CHART, generate_values(), strict=True, kube_version="v1.31.0")
    assert not [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]


@pytest.mark.parametrize("values, where", [
    ({"mode": "generate"}, "missing properties 'model', 'output'"),
    ({"mode": "generate", "generate": {"model": "s3://runs/x/"}}, "missing property 'output'"),
    ({"mode": "generate", "generate": {"model": None, "output": "s3://g/"}}, "/generate/model': got null"),
    ({"mode": "generate", "generate": {**GENERATE, "model": ""}}, "/generate/model"),
    (generate_values(sampler="euler-ancestral"), "/generate/sampler"),
    (generate_values(numImages=0), "/generate/numImages"),
    (generate_values(numImges=4), "additional properties 'numImges' not allowed"),
    (generate_values(output="s3://key:secret@gen/x/"), "/generate/output"),
    ({"mode": "predict", "generate": GENERATE}, "/mode"),
    ({"generate": GENERATE}, "missing properties 'instanceData', 'classNoun', 'output'"),
])
def test_chart_schema_requires_each_modes_own_values(chart, values, where):
    with pytest.raises(helm.HelmValuesError) as error:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert where in str(error.value)


# --- the operator's policy travels to the generate pod as to the training pod (issue 23) -------

OPERATOR = {"promptFileDirs": ["/etc/prompts"], "allowedHosts": ["push.monitoring"],
            "allowedPrefixes": ["s3://runs/tenant-a/", "s3://models/", "/srv/models"]}
OPERATOR_ENV = {"DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS": "/etc/prompts",
                "DREAMBOOTH_OPERATOR_ALLOWED_HOSTS": "push.monitoring",
                "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES": "s3://runs/tenant-a/,s3://models/,/srv/models"}


def operator_env(job: dict) -> dict:
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env if e["name"].startswith("DREAMBOOTH_OPERATOR_")}


def test_the_generate_job_carries_the_training_jobs_operator_env():
    """generate re-checks --model, --output and what the run's result.json records against the
    policy of its own process: the pod must carry it, as the training pod does."""
    cluster = ClusterSettings(prompt_file_dirs=("/etc/prompts",), allowed_hosts=("push.monitoring",),
                              allowed_prefixes=tuple(OPERATOR["allowedPrefixes"]))
    train = build_job(JobSpec(train=TrainConfig(instance_data="s3://runs/tenant-a/photos/",
                                                class_noun="dog", output="s3://runs/tenant-a/dog/"),
                              cluster=cluster))
    generate = build_generate_job(GenerateJobSpec(generate=GenerateConfig(**GENERATE), cluster=cluster))
    assert operator_env(generate) == operator_env(train) == OPERATOR_ENV


def test_chart_generate_mode_carries_the_training_modes_operator_env(render):
    train = render({"job": {"instanceData": "s3://runs/tenant-a/photos/", "classNoun": "dog",
                            "output": "s3://runs/tenant-a/dog/"}, "operator": OPERATOR}).one("Job")
    rendered = render({**generate_values(), "operator": OPERATOR})
    assert operator_env(rendered.one("Job")) == operator_env(train) == OPERATOR_ENV
    assert_same(comparable(python_job(rendered.values)), comparable(rendered.one("Job")))


@pytest.mark.parametrize("bad", ["runs/tenant-a/", "s3:///x", "s3://a/,s3://b/", "gs://b/"])
def test_allowed_prefixes_are_s3_prefixes_or_absolute_directories(chart, bad):
    with pytest.raises(InvalidInputError, match="allowed_prefixes"):
        ClusterSettings(allowed_prefixes=(bad,))
    with pytest.raises(helm.HelmValuesError, match="/operator/allowedPrefixes/0"):
        chart.render({**generate_values(), "operator": {"allowedPrefixes": [bad]}}, name=RELEASE,
                     namespace=NAMESPACE, is_install=True)


def test_the_chart_states_each_generate_option_when_the_python_builder_does():
    """generateOptions' `stated` is generation.config.stated_when, the rule to_cli_args follows."""
    package = yaml.safe_load((CHART / "files" / "package.yaml").read_text())
    by_key = {values_key(f.name): f for f in gen.fields()}
    assert package["generateOptions"]
    for option in package["generateOptions"]:
        assert option["stated"] == gen.stated_when(by_key[option["key"]]), option["key"]
