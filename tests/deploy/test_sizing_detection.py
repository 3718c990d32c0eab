"""`--sizing auto` reads an s3:// base model's model_index.json and denoiser config at `submit`
and `batch` (training/sized_model.py through storage/glance.py) against the S3 server: a klein
model gets its family's profile, klein 9B its own, and whatever cannot be read at once (no
object, no bucket, no credentials, not JSON, an unknown pipeline) the train mode's largest."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_sizing_profiles import TRAIN, expected, pod, sized

from dreambooth_job.bench.architectures import FLUX2_KLEIN_TRANSFORMER_CONFIGS
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.manifest import JobSpec, build_job
from dreambooth_job.storage import places, s3_client
from dreambooth_job.training import sized_model, sizing

KLEIN_PROFILES = {"flux2-klein-4b": "flux2-klein", "flux2-klein-9b": "flux2-klein-9b"}


def put_model(prefix: str, pipeline_class: str, transformer: dict | None = None) -> str:
    """A base model's small files under `prefix` (the weights are not what sizing reads)."""
    places.write_bytes(f"{prefix}/model_index.json", json.dumps({"_class_name": pipeline_class}).encode())
    if transformer is not None:
        places.write_bytes(f"{prefix}/transformer/config.json", json.dumps(transformer).encode())
    return f"{prefix}/"


@pytest.mark.parametrize("train_mode", ["full", "lora"])
@pytest.mark.parametrize("model", list(KLEIN_PROFILES))
def test_an_s3_klein_model_gets_its_sizes_profile_at_submit(bucket, model, train_mode):
    base = put_model(f"s3://{bucket}/{model}", "Flux2KleinPipeline",
                     dict(FLUX2_KLEIN_TRANSFORMER_CONFIGS[model]))
    profile = f"{KLEIN_PROFILES[model]}-{train_mode}"
    assert sizing.auto_profile(train_mode, base) == profile
    train = dataclasses.replace(TRAIN, train_mode=train_mode, base_model=base)
    grace = sizing.PROFILES[profile].job_grace_seconds
    ceilings = {"max_termination_grace_seconds": grace} if grace > 600 else {}
    job = build_job(JobSpec(train=train, cluster=ClusterSettings(ceilings=ceilings)))
    assert sized(job) == expected(sizing.PROFILES[profile])


@pytest.mark.parametrize(("pipeline_class", "profile"), [
    ("StableDiffusionPipeline", "sd-full"), ("StableDiffusionXLPipeline", "sdxl-full")])
def test_an_s3_sd_model_gets_its_familys_profile(bucket, pipeline_class, profile):
    base = put_model(f"s3://{bucket}/m", pipeline_class)
    assert sizing.auto_profile("full", base) == profile


def test_a_klein_model_without_a_readable_transformer_config_is_sized_as_4b(bucket):
    assert sizing.auto_profile("lora", put_model(f"s3://{bucket}/k", "Flux2KleinPipeline")) == \
        "flux2-klein-lora"


@pytest.mark.parametrize("case", ["no object", "no bucket", "not json", "unknown pipeline",
                                  "too large", "no credentials"])
def test_an_s3_model_that_cannot_be_read_at_once_gets_the_largest_profile(bucket, monkeypatch, case):
    base = f"s3://{bucket}/{case.replace(' ', '-')}/"
    if case == "no bucket":
        base = f"s3://{bucket}-absent/model/"
    elif case == "not json":
        places.write_bytes(f"{base}model_index.json", b"\xff{")
    elif case == "unknown pipeline":
        put_model(base.rstrip("/"), "QwenImagePipeline")
    elif case == "too large":
        places.write_bytes(f"{base}model_index.json", json.dumps(
            {"_class_name": "Flux2KleinPipeline", "pad": "x" * sized_model.MAX_CONFIG_BYTES}).encode())
    elif case == "no credentials":  # the same store and model, no identity: never waited for
        put_model(base.rstrip("/"), "Flux2KleinPipeline")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        s3_client.reset_client()
    for mode in sizing.TRAIN_MODES:
        assert sizing.auto_profile(mode, base) == sizing.UNDETECTED[mode]
    s3_client.reset_client()


def test_an_s3_model_is_read_once_per_process(bucket):
    """A batch of many rows on one base model reads its files once: the answer outlives them."""
    base = put_model(f"s3://{bucket}/once", "Flux2KleinPipeline",
                     dict(FLUX2_KLEIN_TRANSFORMER_CONFIGS["flux2-klein-9b"]))
    assert sizing.auto_profile("lora", base) == "flux2-klein-9b-lora"
    places.delete(f"s3://{bucket}/once/")
    assert sizing.auto_profile("lora", base) == "flux2-klein-9b-lora"


def test_a_batch_sizes_s3_klein_rows_by_their_models(bucket, tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    from dreambooth_job.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))  # --dry-run needs no cluster
    klein = put_model(f"s3://{bucket}/klein-4b", "Flux2KleinPipeline",
                      dict(FLUX2_KLEIN_TRANSFORMER_CONFIGS["flux2-klein-4b"]))
    klein_9b = put_model(f"s3://{bucket}/klein-9b", "Flux2KleinPipeline",
                         dict(FLUX2_KLEIN_TRANSFORMER_CONFIGS["flux2-klein-9b"]))
    path = tmp_path / "night.yaml"
    path.write_text(f"""\
defaults: {{output: "s3://runs/{{id}}/", class_noun: dog, train_mode: lora}}
subjects:
  - {{id: kit, instance_data: "s3://photos/kit/", base_model: "{klein}"}}
  - {{id: max, instance_data: "s3://photos/max/", base_model: "{klein_9b}"}}
  - {{id: gone, instance_data: "s3://photos/gone/", base_model: "s3://{bucket}/absent/"}}
""")
    result = CliRunner().invoke(main, ["batch", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    jobs = {job["metadata"]["labels"]["dreambooth-job/subject"]: job
            for job in yaml.safe_load_all(result.output) if job and job.get("kind") == "Job"}
    assert sized(jobs["kit"]) == expected(sizing.PROFILES["flux2-klein-lora"])
    assert sized(jobs["max"]) == expected(sizing.PROFILES["flux2-klein-9b-lora"])
    assert sized(jobs["gone"]) == expected(sizing.PROFILES[sizing.UNDETECTED["lora"]])
    args = pod(jobs["max"])["containers"][0]["args"]
    assert args[args.index("--base-model") + 1] == klein_9b


def test_a_store_that_does_not_answer_is_asked_once_per_process(bucket, monkeypatch, caplog):
    """A batch of many rows on an unreachable store costs one failed request, not one a row."""
    import logging

    from dreambooth_job.devtools import s3server

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s3server.free_port()}")  # closed
    s3_client.reset_client()
    with caplog.at_level(logging.DEBUG, logger="dreambooth_job.storage.glance"):
        for model in ("first", "second"):
            assert sizing.auto_profile("lora", f"s3://{bucket}/{model}/") == sizing.UNDETECTED["lora"]
    assert "not read s3://" in caplog.text and "nor more from its store" in caplog.text
    assert f"not read s3://{bucket}/second/model_index.json: its store did not answer earlier" in caplog.text
    monkeypatch.undo()
    s3_client.reset_client()
