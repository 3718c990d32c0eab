"""End to end: photos in S3 -> `dreambooth-job train` -> model, grids, result.json in S3."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from helpers import make_photo, upload_photos
from PIL import Image

import dreambooth_job
from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.generation import sampling
from dreambooth_job.outputs import result as result_module
from dreambooth_job.storage import places as storage

SMALL = ["--resolution", "64", "--max-train-steps", "4", "--num-class-images", "3",
         "--sample-steps", "2", "--num-validation-images", "2", "--log-every", "2",
         "--validation-prompt", "a {identifier} {class_noun} on the beach",
         "--validation-prompt", "a red {identifier} {class_noun}", "--learning-rate", "1e-3",
         "--metrics-port", "0"]


def train(*args, env=None):
    return CliRunner().invoke(main, ["train", *SMALL, *args], env=env, catch_exceptions=False)


@pytest.fixture
def job_args(bucket, photo_dir, tiny_model, tmp_path):
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    return ["--instance-data", photos, "--class-noun", "dog", "--base-model", str(tiny_model),
            "--output", f"s3://{bucket}/runs/dog/", "--class-data", f"s3://{bucket}/class-cache/",
            "--cache-dir", str(tmp_path / "cache")]


def read_result(uri):
    return json.loads(storage.read_bytes(storage.join(uri, "result.json")))


def test_train_writes_model_grids_and_result(job_args, bucket, tiny_model, tmp_path):
    outcome = train(*job_args)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    run = f"s3://{bucket}/runs/dog/"
    result = read_result(run)
    jsonschema.validate(result, result_module.schema())
    assert result["status"] == "succeeded" and result["training"]["steps_done"] == 4
    assert result["class_images"] == {**result["class_images"], "requested": 3, "generated": 3, "reused": 0}
    assert result["prompts"]["instance"] == f"a {result['identifier']['token']} dog"
    assert set(result["durations_seconds"]) >= {"download", "validate", "load_model", "class_images",
                                                "train", "sample", "upload"}
    assert storage.exists(storage.join(run, result_module.COMPLETION_MARKER))

    local = tmp_path / "downloaded"
    storage.download_dir(run, local)
    tuned = StableDiffusionPipeline.from_pretrained(local / "model")
    base = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    changed = [not torch.equal(a, b) for a, b in zip(tuned.unet.parameters(), base.parameters())]
    assert any(changed)
    assert (local / "model" / "unet" / "diffusion_pytorch_model.safetensors").exists()

    [grid_uri] = result["outputs"]["samples"]
    grid = Image.open(local / grid_uri.removeprefix(run))
    assert grid.size == (sampling.LABEL_WIDTH + 2 * 64, 2 * 64)


def test_second_subject_of_the_same_class_reuses_every_class_image(job_args, bucket, tmp_path):
    assert train(*job_args).exit_code == ExitCode.OK
    other_photos = tmp_path / "other"
    for i in range(3):
        make_photo(other_photos / f"{i}.png", seed=100 + i)
    second = upload_photos(other_photos, f"s3://{bucket}/photos/dog2/")
    args = list(job_args)
    args[args.index("--instance-data") + 1] = second
    args[args.index("--output") + 1] = f"s3://{bucket}/runs/dog2/"
    assert train(*args).exit_code == ExitCode.OK
    counts = read_result(f"s3://{bucket}/runs/dog2/")["class_images"]
    assert counts["generated"] == 0 and counts["reused"] == 3


def test_partial_class_cache_is_topped_up(job_args, bucket):
    assert train(*job_args).exit_code == ExitCode.OK
    first = read_result(f"s3://{bucket}/runs/dog/")["class_images"]
    storage.delete(storage.join(first["cache_uri"], "00001.png"))
    args = [*job_args, "--num-class-images", "4", "--force"]
    args[args.index("--output") + 1] = f"s3://{bucket}/runs/dog-more/"
    assert train(*args).exit_code == ExitCode.OK
    counts = read_result(f"s3://{bucket}/runs/dog-more/")["class_images"]
    assert (counts["generated"], counts["reused"]) == (2, 2)


def test_bad_photos_are_skipped_and_named(job_args, bucket, tmp_path):
    storage.write_bytes(f"s3://{bucket}/photos/dog/broken.jpg", b"\xff\xd8 not really a jpeg")
    make_photo(tmp_path / "tiny.png", seed=9, size=(100, 100))
    storage.upload_file(tmp_path / "tiny.png", f"s3://{bucket}/photos/dog/tiny.png")
    assert train(*job_args).exit_code == ExitCode.OK
    photos = read_result(f"s3://{bucket}/runs/dog/")["photos"]
    assert len(photos["used"]) == 4
    reasons = {r["file"]: r["reason"] for r in photos["rejected"]}
    assert set(reasons) == {"broken.jpg", "tiny.png"}
    assert "decodable" in reasons["broken.jpg"] and "smaller" in reasons["tiny.png"]


def test_no_valid_photos_exits_2_with_one_line(bucket, tiny_model, tmp_path):
    storage.write_bytes(f"s3://{bucket}/photos/empty/readme.txt", b"no photos here")
    outcome = train("--instance-data", f"s3://{bucket}/photos/empty/", "--class-noun", "dog",
                    "--base-model", str(tiny_model), "--output", f"s3://{bucket}/runs/empty/",
                    "--cache-dir", str(tmp_path / "cache"), "--log-format", "json")
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--instance-data" in errors[0] and "readme.txt" in errors[0]
    failed = read_result(f"s3://{bucket}/runs/empty/")
    assert failed["status"] == "failed" and failed["exit_code"] == ExitCode.INVALID_INPUT
    assert not storage.exists(f"s3://{bucket}/runs/empty/{result_module.COMPLETION_MARKER}")


def test_base_model_from_an_s3_prefix(job_args, bucket, tiny_model, tmp_path):
    model_uri = f"s3://{bucket}/models/tiny/"
    storage.upload_dir(tiny_model, model_uri)
    args = list(job_args)
    args[args.index("--base-model") + 1] = model_uri
    args += ["--no-prior-preservation"]
    assert train(*args).exit_code == ExitCode.OK
    result = read_result(f"s3://{bucket}/runs/dog/")
    assert result["base_model"]["source"] == model_uri
    assert result["class_images"]["requested"] == 0
    assert list((tmp_path / "cache" / "models").iterdir()), "the model was cached locally"


def test_train_runs_as_a_process_with_env_configuration(job_args, bucket, s3_server):
    """The installed console script, configured through DREAMBOOTH_* variables."""
    args = dict(zip(job_args[::2], job_args[1::2]))
    env = {**__import__("os").environ, **s3_server.client_env(),
           "DREAMBOOTH_INSTANCE_DATA": args["--instance-data"], "DREAMBOOTH_CLASS_NOUN": "dog",
           "DREAMBOOTH_OUTPUT": args["--output"], "DREAMBOOTH_BASE_MODEL": args["--base-model"],
           "DREAMBOOTH_CACHE_DIR": args["--cache-dir"], "DREAMBOOTH_NO_SUCH": "ignored",
           # What the chart and build_job set: the image that ran, recorded in result.json.
           result_module.IMAGE_ENV: "registry.example/dreambooth-job:1.2.3"}
    process = subprocess.run([sys.executable, "-m", "dreambooth_job.cli", "train", *SMALL,
                              "--no-prior-preservation", "--log-format", "json"],
                             env=env, capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode == 0, process.stderr[-2000:]
    lines = [json.loads(line) for line in process.stderr.splitlines() if line.startswith("{")]
    assert lines and all(line["subject_id"] == "dog" for line in lines)
    result = read_result(args["--output"])
    jsonschema.validate(result, result_module.schema())
    assert result["status"] == "succeeded"
    assert result["image"] == "registry.example/dreambooth-job:1.2.3"
    assert result["package_version"] == dreambooth_job.__version__


def test_resolution_auto_is_the_models_native_one_and_the_same_run_as_explicit(
        job_args, bucket, tiny_model, caplog):
    """--resolution auto (the default) resolves to the UNet's sample size x the VAE's factor once
    the model is loaded: result.json records the number; the class-image cache key and "the same
    run" are those of the explicit value."""
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model)
    native = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    args = [a if a != f"s3://{bucket}/runs/dog/" else f"s3://{bucket}/runs/auto/" for a in job_args]
    outcome = train(*args, "--resolution", "auto")
    assert outcome.exit_code == ExitCode.OK, outcome.output
    result = read_result(f"s3://{bucket}/runs/auto/")
    jsonschema.validate(result, result_module.schema())
    assert result["training"]["resolution"] == native
    assert result["config"]["resolution"] == native

    explicit = train(*job_args, "--resolution", str(native))  # another output, the same cache
    assert explicit.exit_code == ExitCode.OK, explicit.output
    assert read_result(f"s3://{bucket}/runs/dog/")["class_images"]["reused"] == 3

    again = train(*args, "--resolution", str(native))
    assert again.exit_code == ExitCode.OK, again.output
    assert "already holds a completed run" in again.output


@pytest.fixture
def other_vae(tiny_model, tmp_path):
    """The tiny base's VAE architecture with other (seeded random) weights, saved as a directory."""
    from diffusers import AutoencoderKL

    torch.manual_seed(123)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(tiny_model / "vae"))
    vae.save_pretrained(tmp_path / "other-vae")
    return tmp_path / "other-vae"


def test_vae_from_an_s3_prefix_replaces_the_base_models(job_args, bucket, tiny_model, other_vae,
                                                        tmp_path):
    from diffusers import AutoencoderKL

    storage.upload_dir(other_vae, f"s3://{bucket}/vaes/other/")
    outcome = train(*job_args, "--vae", f"s3://{bucket}/vaes/other/", "--log-format", "text")
    assert outcome.exit_code == ExitCode.OK, outcome.output
    assert f"VAE in float32 (--vae s3://{bucket}/vaes/other/)" in outcome.output
    local = tmp_path / "downloaded"
    storage.download_dir(f"s3://{bucket}/runs/dog/model/", local)
    saved, override = AutoencoderKL.from_pretrained(local / "vae"), AutoencoderKL.from_pretrained(other_vae)
    base = AutoencoderKL.from_pretrained(tiny_model / "vae")
    def as_saved(weights):  # --save-precision fp16 (the default)
        return [w.half().float() for w in weights.parameters()]

    assert all(torch.equal(a.float(), b) for a, b in zip(saved.parameters(), as_saved(override)))
    assert not all(torch.equal(a.float(), b) for a, b in zip(saved.parameters(), as_saved(base)))


def test_vae_without_a_config_exits_2_naming_it(job_args, tmp_path):
    (tmp_path / "not-a-vae").mkdir()
    outcome = train(*job_args, "--vae", str(tmp_path / "not-a-vae"))
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    assert f"--vae {tmp_path / 'not-a-vae'} holds no diffusers VAE (no config.json)" in outcome.output
