"""A `submit-generate` Job with `sizing: auto` is sized by the run it draws from: the family and
train mode its result.json records (and the size of its base model where that can be read),
with no longer a grace period than before; a run whose result.json cannot be read at once keeps
the training pod's undetected sizing, and a named profile wins."""

from __future__ import annotations

import json

import pytest
from kubernetes.utils import parse_quantity
from test_sizing_detection import put_model

from dreambooth_job.bench.architectures import FLUX2_KLEIN_TRANSFORMER_CONFIGS
from dreambooth_job.generation.generate_config import GenerateConfig
from dreambooth_job.k8s.cluster_settings import TERMINATION_MARGIN_SECONDS, ClusterSettings
from dreambooth_job.k8s.generate_job import GenerateJobSpec, build_generate_job
from dreambooth_job.storage import places
from dreambooth_job.training import sizing

UNDETECTED_FULL = sizing.PROFILES[sizing.UNDETECTED["full"]]


def put_run(run: str, family: str | None, train_mode: str, base_model: str) -> str:
    """A run's result.json as the job writes it, the parts sizing reads."""
    result = {"status": "succeeded", "config": {"train_mode": train_mode, "base_model": base_model},
              "base_model": {"source": base_model, "family": family}}
    places.write_bytes(f"{run}/result.json", json.dumps(result).encode())
    return f"{run}/"


def generate_pod(model: str, cluster: ClusterSettings | None = None) -> dict:
    job = build_generate_job(GenerateJobSpec(
        generate=GenerateConfig(model=model, output="s3://generated/x/"),
        cluster=cluster or ClusterSettings()))
    return job["spec"]["template"]["spec"]


def sizes(spec: dict) -> dict:
    resources = spec["containers"][0]["resources"]
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")["emptyDir"]
    return {"grace": spec["terminationGracePeriodSeconds"], "tmp": parse_quantity(tmp["sizeLimit"]),
            **{f"{kind} {name}": parse_quantity(resources[kind][name])
               for kind in ("requests", "limits") for name in ("memory", "ephemeral-storage")}}


def profile_sizes(profile: sizing.Profile) -> dict:
    grace = min(profile.job_grace_seconds, UNDETECTED_FULL.job_grace_seconds)
    return {"grace": grace + TERMINATION_MARGIN_SECONDS, "tmp": parse_quantity(profile.tmp_size_limit),
            **{f"{kind} {name}": parse_quantity(profile.resources[kind][name])
               for kind in ("requests", "limits") for name in ("memory", "ephemeral-storage")}}


@pytest.mark.parametrize(("family", "train_mode", "model", "profile"), [
    ("sd", "lora", None, "sd-lora"),
    ("sd", "full", None, "sd-full"),
    ("flux2-klein", "full", "flux2-klein-4b", "flux2-klein-full"),
    ("flux2-klein", "lora", "flux2-klein-9b", "flux2-klein-9b-lora"),
])
@pytest.mark.parametrize("weights", ["", "lora/", "model/"])
def test_a_generate_job_is_sized_by_the_runs_recorded_family(bucket, family, train_mode, model,
                                                             profile, weights):
    base = (put_model(f"s3://{bucket}/{model}", "Flux2KleinPipeline",
                      dict(FLUX2_KLEIN_TRANSFORMER_CONFIGS[model])) if model else "runwayml/sd15")
    run = put_run(f"s3://{bucket}/runs/dog", family, train_mode, base)
    assert sizes(generate_pod(run + weights)) == profile_sizes(sizing.PROFILES[profile])


@pytest.mark.parametrize("case", ["no run", "no family recorded", "unknown family", "not json"])
def test_a_run_that_cannot_be_read_keeps_the_undetected_sizing(bucket, case):
    run = f"s3://{bucket}/runs/{case.replace(' ', '-')}"
    if case == "no family recorded":
        put_run(run, None, "lora", "x")
    elif case == "unknown family":
        put_run(run, "qwen-image", "lora", "x")
    elif case == "not json":
        places.write_bytes(f"{run}/result.json", b"[1, ")
    assert sizes(generate_pod(f"{run}/")) == profile_sizes(UNDETECTED_FULL)


def test_a_named_profile_wins_over_the_runs_family(bucket):
    run = put_run(f"s3://{bucket}/runs/named", "sd", "lora", "x")
    named = sizes(generate_pod(run, ClusterSettings(sizing="sdxl-lora")))
    assert named == profile_sizes(sizing.PROFILES["sdxl-lora"])
