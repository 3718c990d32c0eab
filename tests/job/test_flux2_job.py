"""FLUX.2 [klein] through the same job: the family is detected from the base model, and a LoRA run
with prior preservation (class images sampled by the frozen base) runs end to end against the real
S3 server; the diffusers LoRA file loads with Flux2KleinPipeline and changes what it samples, and the
kohya file has the same effect. The
tiny FLUX.2 [klein]-shaped pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from diffusers import Flux2KleinPipeline
from helpers import upload_photos

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage

SMALL = ["--resolution", "32", "--max-train-steps", "3", "--num-class-images", "2",
         "--sample-steps", "2", "--num-validation-images", "1", "--log-every", "1",
         "--sample-every", "3", "--validation-prompt", "a {identifier} {class_noun} on the beach",
         "--metrics-port", "0", "--learning-rate", "1e-2", "--log-format", "text"]


@pytest.fixture
def photos(bucket, photo_dir):
    return upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")


def sample(pipe) -> torch.Tensor:
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    return pipe(prompt="a sks dog", height=32, width=32, num_inference_steps=2, latents=latents,
                guidance_scale=1.0, output_type="pt").images


def test_klein_lora_with_prior_preservation_loads_on_the_base(photos, bucket, tiny_flux2_klein_model,
                                                             tmp_path):
    run = f"s3://{bucket}/runs/klein-lora/"
    outcome = CliRunner().invoke(main, [
        "train", *SMALL, "--instance-data", photos, "--class-noun", "dog", "--output", run,
        "--base-model", str(tiny_flux2_klein_model), "--class-data", f"s3://{bucket}/class-cache/",
        "--cache-dir", str(tmp_path / "cache"), "--train-mode", "lora", "--lora-rank", "4"],
        catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    training = result["training"]
    assert result["status"] == "succeeded" and training["train_mode"] == "lora"
    assert training["steps_done"] == 3 and training["final_prior_loss"] is not None
    assert result["class_images"]["generated"] == 2
    # --identifier auto: a rare whole word of the Qwen BPE, one token after a space.
    assert result["identifier"]["chosen"] == "auto" and len(result["identifier"]["token_ids"]) == 1
    adapters = sorted(e["path"] for e in result["outputs"]["files"] if e["path"].startswith("lora/"))
    assert len(adapters) == 2 and "lora/pytorch_lora_weights.safetensors" in adapters
    # --guidance-scale and --save-precision auto: the family's, recorded resolved.
    assert (result["config"]["guidance_scale"], result["config"]["save_precision"]) == (4.0, "bf16")

    local = tmp_path / "lora"
    storage.download_dir(storage.join(run, "lora"), local)
    from safetensors.torch import load_file

    weights = load_file(local / "pytorch_lora_weights.safetensors")
    assert weights and all(key.startswith("transformer.transformer_blocks.") for key in weights)
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    base = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model)
    before = sample(base)
    base.load_lora_weights(local)
    with_adapters = sample(base)
    assert not torch.equal(with_adapters, before)
    # The kohya file (original FLUX.2 names) has the same effect through diffusers' converter.
    kohya_file = next(p for p in adapters if p != "lora/pytorch_lora_weights.safetensors")
    other = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model)
    other.load_lora_weights(str(local / kohya_file.removeprefix("lora/")))
    torch.testing.assert_close(sample(other), with_adapters, rtol=1e-5, atol=1e-5)

    # `generate` draws from the LoRA run with the family's sampler.
    drawn = f"s3://{bucket}/drawn/"
    outcome = CliRunner().invoke(main, [
        "generate", "--model", run, "--output", drawn, "--cache-dir", str(tmp_path / "cache"),
        "--steps", "2", "--prompt", "a sks dog", "--num-images", "1", "--seed", "5",
        "--log-format", "json"], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    record = json.loads(storage.read_bytes(drawn + "generation.json"))
    assert record["sampler"] == "flow-euler" and record["guidance_scale"] == 4.0
    assert "prompt-00-seed-5.png" in {f.relative_path for f in storage.list_files(drawn)}


def test_klein_full_fine_tune_saves_a_pipeline_and_refuses_the_single_file(
        photos, bucket, tiny_flux2_klein_model, tmp_path):
    run = f"s3://{bucket}/runs/klein-full/"
    common = ["train", *SMALL, "--instance-data", photos, "--class-noun", "dog",
              "--base-model", str(tiny_flux2_klein_model), "--class-data", f"s3://{bucket}/class-cache/",
              "--cache-dir", str(tmp_path / "cache"), "--identifier", "sks", "--save-precision", "fp32"]
    refused = CliRunner().invoke(main, [*common, "--output", f"s3://{bucket}/runs/klein-single/",
                                        "--export-single-file"])
    assert refused.exit_code == ExitCode.INVALID_INPUT
    assert "single-file layout is not written yet" in refused.output
    outcome = CliRunner().invoke(main, [*common, "--output", run], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    assert result["training"]["train_mode"] == "full" and result["training"]["final_prior_loss"] is not None
    local = tmp_path / "model"
    storage.download_dir(storage.join(run, "model"), local)
    tuned = Flux2KleinPipeline.from_pretrained(local)
    base = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model)
    assert not torch.equal(sample(tuned), sample(base))
