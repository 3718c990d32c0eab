"""SDXL through the same job: the family is detected from the base model, and full fine-tuning
and LoRA (both text encoders training) run end to end against the real S3 server with prior
preservation; the outputs load with diffusers' SDXL pipeline. The tiny SDXL-shaped pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionXLPipeline
from helpers import JobProcess, upload_photos

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage
from dreambooth_job.training.checkpoint import CheckpointStore

SMALL = ["--resolution", "64", "--max-train-steps", "4", "--num-class-images", "2",
         "--sample-steps", "2", "--num-validation-images", "1", "--log-every", "2",
         "--sample-every", "2", "--validation-prompt", "a {identifier} {class_noun} on the beach",
         "--metrics-port", "0", "--learning-rate", "1e-3", "--train-text-encoder",
         "--save-precision", "fp32", "--log-format", "text"]


@pytest.fixture
def photos(bucket, photo_dir):
    return upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")


def train(photos, bucket, model, tmp_path, run: str, *extra: str):
    outcome = CliRunner().invoke(main, [
        "train", *SMALL, "--instance-data", photos, "--class-noun", "dog", "--output", run,
        "--base-model", str(model), "--class-data", f"s3://{bucket}/class-cache/",
        "--cache-dir", str(tmp_path / "cache"), *extra], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    return json.loads(storage.read_bytes(storage.join(run, "result.json")))


def sample(pipe) -> torch.Tensor:
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    return pipe("a sks dog", height=64, width=64, num_inference_steps=2, latents=latents,
                output_type="pt").images


def differing(a, b) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_sdxl_full_fine_tune_with_prior_preservation_loads_as_an_sdxl_pipeline(
        photos, bucket, tiny_sdxl_model, tmp_path):
    run = f"s3://{bucket}/runs/sdxl-full/"
    result = train(photos, bucket, tiny_sdxl_model, tmp_path, run, "--export-single-file")
    training = result["training"]
    assert result["status"] == "succeeded" and training["steps_done"] == 4
    assert training["train_mode"] == "full" and training["final_prior_loss"] is not None
    assert result["class_images"]["generated"] == 2
    assert sorted(uri.rsplit("/", 1)[-1] for uri in result["outputs"]["samples"]) == [
        "step-000002.png", "step-000004.png"]

    local = tmp_path / "model"
    storage.download_dir(storage.join(run, "model"), local)
    tuned = StableDiffusionXLPipeline.from_pretrained(local)
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_model)
    # --train-text-encoder trains the UNet and both text encoders.
    for name in ("unet", "text_encoder", "text_encoder_2"):
        assert differing(getattr(tuned, name), getattr(base, name)), name
    assert not differing(tuned.vae, base.vae)
    assert not torch.equal(sample(tuned), sample(base))
    assert_single_file_holds(result["outputs"]["single_file"], tuned, local, tmp_path)


def assert_single_file_holds(uri: str, pipeline, config_dir, tmp_path) -> None:
    """The single file, in SDXL's original layout, holds `pipeline`'s weights as diffusers reads
    them back: UNet and VAE through `from_single_file`, the encoders through diffusers' CLIP and
    OpenCLIP converters (the tiny encoders are equally wide, and diffusers' pipeline loader tells
    SDXL's two apart by width; tests/unit/test_sdxl_single_file.py reloads a whole pipeline)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from safetensors.torch import load_file

    path = tmp_path / "single.safetensors"
    storage.download_file(uri, path)
    checkpoint = load_file(path)
    assert {key.split(".")[0] for key in checkpoint} == {"model", "first_stage_model", "conditioner"}
    reloaded = {
        "unet": UNet2DConditionModel.from_single_file(str(path), config=str(config_dir), subfolder="unet",
                                                      local_files_only=True).state_dict(),
        "vae": AutoencoderKL.from_single_file(str(path), config=str(config_dir), subfolder="vae",
                                              local_files_only=True).state_dict(),
        "text_encoder": {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(
            checkpoint).items() if not k.endswith("position_ids")},
        "text_encoder_2": convert_open_clip_checkpoint(
            pipeline.text_encoder_2, checkpoint, prefix="conditioner.embedders.1.model.")}
    for name, got in reloaded.items():
        want = getattr(pipeline, name).state_dict()
        assert got.keys() == want.keys(), name
        mismatched = [k for k in want if not torch.equal(got[k], want[k])]
        assert not mismatched, f"{name}: {mismatched[:3]}"


def test_sdxl_lora_on_the_unet_and_both_text_encoders_loads_on_the_base(
        photos, bucket, tiny_sdxl_model, tmp_path):
    run = f"s3://{bucket}/runs/sdxl-lora/"
    result = train(photos, bucket, tiny_sdxl_model, tmp_path, run, "--train-mode", "lora",
                   "--lora-rank", "4", "--lora-merge", "--export-single-file")
    training = result["training"]
    assert result["status"] == "succeeded" and training["train_mode"] == "lora"
    assert training["final_prior_loss"] is not None
    published = {entry["path"] for entry in result["outputs"]["files"]}
    adapters = sorted(p for p in published if p.startswith("lora/"))
    assert len(adapters) == 2 and "lora/pytorch_lora_weights.safetensors" in adapters
    assert sorted(uri.removeprefix(run) for uri in result["outputs"]["lora"]) == adapters
    kohya_file = next(p for p in adapters if p != "lora/pytorch_lora_weights.safetensors")

    local = tmp_path / "lora"
    storage.download_dir(storage.join(run, "lora"), local)
    from safetensors.torch import load_file

    keys = load_file(local / "pytorch_lora_weights.safetensors").keys()
    assert {key.split(".", 1)[0] for key in keys} == {"unet", "text_encoder", "text_encoder_2"}
    # The kohya file: SDXL's original UNet block names, both encoders (tests/unit/test_sdxl_lora_files.py).
    kohya_keys = load_file(local / kohya_file.removeprefix("lora/")).keys()
    assert {key.split("_")[1] for key in kohya_keys} == {"unet", "te1", "te2"}
    assert any(key.startswith("lora_unet_input_blocks_") for key in kohya_keys)
    assert not any("down_blocks" in key for key in kohya_keys)
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_model)
    before = sample(base)
    base.load_lora_weights(local)
    with_adapters = sample(base)
    assert not torch.equal(with_adapters, before)

    # --lora-merge: base + adapters folded into an SDXL pipeline, both encoders' adapters too.
    merged_dir = tmp_path / "merged"
    storage.download_dir(storage.join(run, "model"), merged_dir)
    merged = StableDiffusionXLPipeline.from_pretrained(merged_dir)
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_model)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        assert differing(getattr(merged, name), getattr(plain, name)), name
    merged.scheduler = base.scheduler  # the job saves the grids' sampler (generation/sampling.py) with it
    torch.testing.assert_close(sample(merged), with_adapters, rtol=1e-4, atol=1e-4)
    # --export-single-file: the merged model in SDXL's original layout.
    assert_single_file_holds(result["outputs"]["single_file"], merged, merged_dir, tmp_path)


def test_sdxl_run_resumed_after_sigterm_ends_with_the_uninterrupted_runs_weights(
        photos, bucket, tiny_sdxl_model, tmp_path):
    steps = 8

    def job(output: str) -> list[str]:
        # The last of a repeated option wins: SMALL's settings but these.
        return ["train", *SMALL, "--max-train-steps", str(steps), "--log-every", "1",
                "--progress-interval-seconds", "0", "--checkpoint-every", "3",
                "--instance-data", photos, "--class-noun", "dog", "--base-model", str(tiny_sdxl_model),
                "--class-data", f"s3://{bucket}/class-cache/", "--cache-dir", str(tmp_path / "cache"),
                "--output", f"s3://{bucket}/{output}/", "--log-format", "json"]

    def final_weights(output: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        weights = {}
        for name in ("unet", "text_encoder", "text_encoder_2"):
            files = [f for f in storage.list_files(f"s3://{bucket}/{output}/model/{name}/")
                     if f.relative_path.endswith(".safetensors")]
            for f in files:
                local = tmp_path / output / name / f.relative_path
                storage.download_file(storage.join(f"s3://{bucket}/{output}/model/{name}/",
                                                   f.relative_path), local)
                weights.update({f"{name}.{k}": v for k, v in load_file(local).items()})
        return weights

    reference = JobProcess(job("reference"))
    assert reference.wait() == ExitCode.OK, reference.output[-3000:]
    stopped = JobProcess(job("preempted"))
    stopped.wait_for(rf"step 4/{steps}\b")
    stopped.process.terminate()
    assert stopped.wait() == ExitCode.TERMINATED, stopped.output[-3000:]
    newest = CheckpointStore(f"s3://{bucket}/preempted/", keep=2).list()[0]
    assert 4 <= newest.step < steps

    resumed = JobProcess(job("preempted"))
    assert resumed.wait() == ExitCode.OK, resumed.output[-3000:]
    assert f"resuming from checkpoint {newest.uri} at step {newest.step}" in resumed.output
    expected, actual = final_weights("reference"), final_weights("preempted")
    assert expected.keys() == actual.keys() and len(expected) > 0
    # CPU kernels are deterministic here: the resumed run matches bitwise, encoders included.
    mismatched = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not mismatched, f"{len(mismatched)} tensors differ, e.g. {mismatched[:3]}"
