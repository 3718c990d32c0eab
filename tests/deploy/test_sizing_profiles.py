"""Sizing profiles in every form of the Job: build_job and the chart pick the same profile (named,
or `auto` by train mode and the family read from the base model, the train mode's largest where
it cannot be read), size grace, memory and local disk by it, and let
explicit settings win."""

from __future__ import annotations

import dataclasses
import json

import pytest
from deploy_support import assert_same, comparable, spec_from_values, validate_object
from kubernetes.utils import parse_quantity

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.k8s.cluster_settings import TERMINATION_MARGIN_SECONDS, ClusterSettings
from dreambooth_job.k8s.manifest import IndexedJobSpec, JobSpec, build_indexed_job, build_job
from dreambooth_job.training import sizing

TRAIN = TrainConfig(instance_data="s3://photos/dog-42/", class_noun="dog", output="s3://runs/dog-42/")
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
KLEIN = "black-forest-labs/FLUX.2-klein-base-4B"
KLEIN_FULL_GRACE = sizing.PROFILES["flux2-klein-full"].job_grace_seconds
JOB_VALUES = {"instanceData": "s3://photos/dog-42/", "classNoun": "dog", "output": "s3://runs/dog-42/"}


def pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def sized(job: dict) -> dict:
    """What a profile decides in a Job: grace, the job's budget, memory, local disk, /tmp."""
    spec = pod(job)
    (container,) = spec["containers"]
    args = container["args"]
    resources = container["resources"]
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")["emptyDir"]
    return {"grace": spec["terminationGracePeriodSeconds"],
            "budget": float(args[args.index("--termination-grace-seconds") + 1]),
            **{f"{kind} {name}": parse_quantity(resources[kind][name])
               for kind in ("requests", "limits") for name in ("memory", "ephemeral-storage")},
            "tmp": parse_quantity(tmp["sizeLimit"]) if tmp else None}


def expected(profile: sizing.Profile) -> dict:
    resources = profile.resources
    return {"grace": profile.job_grace_seconds + TERMINATION_MARGIN_SECONDS,
            "budget": float(profile.job_grace_seconds),
            **{f"{kind} {name}": parse_quantity(resources[kind][name])
               for kind in ("requests", "limits") for name in ("memory", "ephemeral-storage")},
            "tmp": parse_quantity(profile.tmp_size_limit)}


@pytest.mark.parametrize("name", list(sizing.PROFILES))
def test_build_job_sizes_the_pod_by_the_named_profile(name):
    # A profile above the default grace ceiling (FLUX.2 [klein] full) runs where the operator raised it.
    grace = sizing.PROFILES[name].job_grace_seconds
    ceilings = {"max_termination_grace_seconds": grace} if grace > 600 else {}
    job = build_job(JobSpec(train=TRAIN, cluster=ClusterSettings(sizing=name, ceilings=ceilings)))
    assert sized(job) == expected(sizing.PROFILES[name])
    validate_object(job)


def test_a_profile_above_the_default_grace_ceiling_is_refused_in_one_line():
    with pytest.raises(InvalidInputError, match="above the operator's ceiling of 600 s") as refused:
        build_job(JobSpec(train=TRAIN, cluster=ClusterSettings(sizing="flux2-klein-full")))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("train_mode", "pipeline_class", "profile"), [
    ("full", "StableDiffusionPipeline", "sd-full"),
    ("lora", "StableDiffusionPipeline", "sd-lora"),
    ("full", "StableDiffusionXLPipeline", "sdxl-full"),
    ("lora", "StableDiffusionXLPipeline", "sdxl-lora"),
    ("lora", "Flux2KleinPipeline", "flux2-klein-lora"),
])
def test_auto_picks_the_profile_of_the_family_read_from_a_local_model(tmp_path, train_mode,
                                                                      pipeline_class, profile):
    """The directory's name says "xl" whatever its model: only model_index.json decides."""
    model = tmp_path / "my-xl-model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
    train = dataclasses.replace(TRAIN, train_mode=train_mode, base_model=str(model))
    assert sizing.auto_profile(train_mode, str(model)) == profile
    assert sized(build_job(JobSpec(train=train))) == expected(sizing.PROFILES[profile])


@pytest.mark.parametrize("train_mode", ["full", "lora"])
def test_a_local_klein_model_gets_its_familys_profile_from_model_index(tmp_path, train_mode):
    """klein is not what an undetected model is sized for: read from its model_index.json, its own
    profile (the full one's grace is above the default ceiling: build_job refuses it there)."""
    model = tmp_path / "some-model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline"}))
    assert sizing.auto_profile(train_mode, str(model)) == f"flux2-klein-{train_mode}"
    if train_mode == "lora":
        train = dataclasses.replace(TRAIN, train_mode="lora", base_model=str(model))
        assert sized(build_job(JobSpec(train=train))) == expected(sizing.PROFILES["flux2-klein-lora"])


@pytest.mark.parametrize("train_mode", ["full", "lora"])
@pytest.mark.parametrize("base_model", [
    TrainConfig().base_model, "stabilityai/stable-diffusion-2-1", SDXL, "s3://models/sd15/",
    "s3://models/sdxl-base/"])
def test_auto_never_guesses_the_family_from_a_name(train_mode, base_model):
    """What build_job cannot read gets the train mode's largest profile, whatever the name says."""
    profile = sizing.UNDETECTED[train_mode]
    train = dataclasses.replace(TRAIN, train_mode=train_mode, base_model=base_model)
    assert sizing.auto_profile(train_mode, base_model) == profile
    assert sized(build_job(JobSpec(train=train))) == expected(sizing.PROFILES[profile])


def test_an_sdxl_full_fine_tune_gets_the_time_its_checkpoint_needs():
    """The issue's case: a 31 GB checkpoint cannot be written in the former 25 s."""
    profile = sizing.PROFILES[sizing.auto_profile("full", SDXL)]
    needed = sizing.checkpoint_seconds(profile.checkpoint_bytes)
    assert profile.checkpoint_bytes > 30 * sizing.GB
    assert sized(build_job(JobSpec(train=dataclasses.replace(TRAIN, base_model=SDXL))))["budget"] > needed


def test_explicit_settings_override_the_profile():
    cluster = ClusterSettings(sizing="sdxl-full", termination_grace_period_seconds=900,
                              ceilings={"max_termination_grace_seconds": 900},
                              resources={"requests": {"cpu": "4", "memory": "200Gi"},
                                         "limits": {"ephemeral-storage": "500Gi"}},
                              tmp_size_limit="300Gi")
    job = build_job(JobSpec(train=dataclasses.replace(TRAIN, termination_grace_seconds=700),
                            cluster=cluster))
    got, profile = sized(job), expected(sizing.PROFILES["sdxl-full"])
    assert got == {**profile, "grace": 900, "budget": 700.0,
                   "requests memory": parse_quantity("200Gi"),
                   "limits ephemeral-storage": parse_quantity("500Gi"),
                   "tmp": parse_quantity("300Gi")}
    assert pod(job)["containers"][0]["resources"]["requests"]["cpu"] == "4"


def test_an_unknown_profile_is_refused_in_one_line():
    refusal = r"^sizing 'sdxl' is not a sizing profile: choose one of auto, sd-full"
    with pytest.raises(InvalidInputError, match=refusal) as caught:
        ClusterSettings(sizing="sdxl")
    assert "\n" not in str(caught.value)


def test_the_indexed_job_passes_its_pods_budget_over_the_subject_files():
    spec = IndexedJobSpec(batch_id="night-42", completions=3, cluster=ClusterSettings(sizing="sdxl-lora"))
    assert sized(build_indexed_job(spec)) == expected(sizing.PROFILES["sdxl-lora"])


# ----------------------------------------------------------------------------------------------
# The chart

@pytest.mark.parametrize(("values", "profile"), [
    ({"sizing": "sdxl-full"}, "sdxl-full"),
    ({"sizing": "sdxl-lora"}, "sdxl-lora"),
    ({"sizing": "sd-lora"}, "sd-lora"),
    ({"sizing": "auto"}, sizing.UNDETECTED["full"]),
    ({"job": {"baseModel": SDXL}}, sizing.UNDETECTED["full"]),
    ({"job": {"baseModel": SDXL, "trainMode": "lora"}}, sizing.UNDETECTED["lora"]),
    ({"job": {"trainMode": "lora"}}, sizing.UNDETECTED["lora"]),
    ({"job": {"trainMode": "lora"}, "sizing": "sd-lora"}, "sd-lora"),
    # A klein base model (a hub id the chart cannot read) sized by its own profiles; full needs
    # the operator's grace ceiling raised to its budget.
    ({"job": {"baseModel": KLEIN, "trainMode": "lora"}, "sizing": "flux2-klein-lora"}, "flux2-klein-lora"),
    ({"job": {"baseModel": KLEIN}, "sizing": "flux2-klein-full",
      "operator": {"maxTerminationGraceSeconds": KLEIN_FULL_GRACE}}, "flux2-klein-full"),
])
def test_the_chart_renders_the_builders_job_for_each_profile(render, values, profile):
    values = {**values, "job": {**JOB_VALUES, **values.get("job", {})}}
    rendered = render(values)
    job = rendered.one("Job")
    assert sized(job) == expected(sizing.PROFILES[profile])
    assert_same(comparable(build_job(spec_from_values(rendered.values))), comparable(job))
    validate_object(job)


def test_chart_values_override_the_profile(render):
    values = {"sizing": "sdxl-full", "job": {**JOB_VALUES, "terminationGraceSeconds": 700},
              "operator": {"maxTerminationGraceSeconds": 900},
              "terminationGracePeriodSeconds": 900, "tmp": {"sizeLimit": "300Gi"},
              "resources": {"requests": {"memory": "200Gi"}, "limits": {"ephemeral-storage": "500Gi"}}}
    rendered = render(values)
    job = rendered.one("Job")
    assert sized(job) == {**expected(sizing.PROFILES["sdxl-full"]), "grace": 900, "budget": 700.0,
                          "requests memory": parse_quantity("200Gi"),
                          "limits ephemeral-storage": parse_quantity("500Gi"),
                          "tmp": parse_quantity("300Gi")}
    assert_same(comparable(build_job(spec_from_values(rendered.values))), comparable(job))


def test_the_chart_refuses_an_unknown_profile(chart):
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError, match="sizing"):
        chart.validate_schema({"sizing": "huge", "job": JOB_VALUES})


def test_a_batch_sizes_each_subjects_job_by_its_own_profile(tmp_path, monkeypatch):
    """`batch` builds every row's Job with build_job: a LoRA row next to a full fine-tune, and a
    FLUX.2 [klein] row whose local base model `auto` reads."""
    import yaml
    from click.testing import CliRunner

    from dreambooth_job.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))  # --dry-run needs no cluster
    klein = tmp_path / "klein-base"
    klein.mkdir()
    (klein / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline"}))
    path = tmp_path / "night.yaml"
    path.write_text(f"""\
defaults: {{output: "s3://runs/{{id}}/", class_noun: dog}}
subjects:
  - {{id: dog, instance_data: "s3://photos/dog/"}}
  - {{id: rex, instance_data: "s3://photos/rex/", base_model: {SDXL}, train_mode: lora}}
  - {{id: kit, instance_data: "s3://photos/kit/", base_model: "{klein}", train_mode: lora}}
""")
    result = CliRunner().invoke(main, ["batch", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    jobs = {job["metadata"]["labels"]["dreambooth-job/subject"]: job
            for job in yaml.safe_load_all(result.output) if job and job.get("kind") == "Job"}
    assert sized(jobs["dog"]) == expected(sizing.PROFILES[sizing.UNDETECTED["full"]])
    assert sized(jobs["rex"]) == expected(sizing.PROFILES[sizing.UNDETECTED["lora"]])
    assert sized(jobs["kit"]) == expected(sizing.PROFILES["flux2-klein-lora"])
    args = pod(jobs["kit"])["containers"][0]["args"]
    assert args[args.index("--base-model") + 1] == str(klein)
    for job in jobs.values():
        validate_object(job)
