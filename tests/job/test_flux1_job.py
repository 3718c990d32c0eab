"""FLUX.1 through the same job: the family is detected from the base model; a LoRA run with prior
preservation (class images sampled by the frozen base), CLIP-L's adapters and --identifier auto
runs end to end against the real S3 server, its diffusers LoRA file loads with FluxPipeline and
changes what it samples, and `generate` draws from it; stopped by SIGTERM and rerun, it ends with
the uninterrupted run's adapters bitwise; a full run saves model/ that loads and the single file. The tiny
FLUX.1-shaped pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from diffusers import FluxPipeline
from helpers import JobProcess, upload_photos

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage
from dreambooth_job.training.checkpoint import CheckpointStore

SMALL = ["--resolution", "32", "--max-train-steps", "3", "--num-class-images", "2",
         "--sample-steps", "2", "--num-validation-images", "1", "--log-every", "1",
         "--sample-every", "3", "--validation-prompt", "a {identifier} {class_noun} on the beach",
         "--metrics-port", "0", "--learning-rate", "1e-2", "--save-precision", "fp32",
         "--guidance-scale", "3.5", "--log-format", "text"]


@pytest.fixture
def photos(bucket, photo_dir):
    return upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")


def sample(pipe) -> torch.Tensor:
    latents = torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(0))
    return pipe(prompt="a sks dog", height=32, width=32, num_inference_steps=2, latents=latents,
                output_type="pt").images


def test_flux1_lora_with_prior_preservation_loads_on_the_base(photos, bucket, tiny_flux1_model, tmp_path):
    run = f"s3://{bucket}/runs/flux1-lora/"
    outcome = CliRunner().invoke(main, [
        "train", *SMALL, "--instance-data", photos, "--class-noun", "dog", "--output", run,
        "--base-model", str(tiny_flux1_model), "--class-data", f"s3://{bucket}/class-cache/",
        "--cache-dir", str(tmp_path / "cache"), "--train-mode", "lora", "--lora-rank", "4",
        "--train-text-encoder", "--lora-merge", "--lora-targets", "all", "--export-single-file"],
        catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    training = result["training"]
    assert result["status"] == "succeeded" and training["train_mode"] == "lora"
    assert training["steps_done"] == 3 and training["final_prior_loss"] is not None
    assert result["class_images"]["generated"] == 2
    # --identifier auto: a rare whole word of CLIP's vocabulary (`word</w>`), one token.
    identifier = result["identifier"]
    assert identifier["chosen"] == "auto" and len(identifier["token_ids"]) == 1
    adapters = sorted(e["path"] for e in result["outputs"]["files"] if e["path"].startswith("lora/"))
    assert len(adapters) == 2 and "lora/pytorch_lora_weights.safetensors" in adapters

    local = tmp_path / "lora"
    storage.download_dir(storage.join(run, "lora"), local)
    from safetensors.torch import load_file

    keys = load_file(local / "pytorch_lora_weights.safetensors").keys()
    assert any(key.startswith("transformer.transformer_blocks.") for key in keys)
    assert any(key.startswith("transformer.single_transformer_blocks.") for key in keys)
    assert any(key.startswith("text_encoder.") for key in keys)  # CLIP-L's adapters
    assert not any(key.startswith("text_encoder_2.") for key in keys)  # T5 stays frozen
    base = FluxPipeline.from_pretrained(tiny_flux1_model)
    before = sample(base)
    base.load_lora_weights(local)
    with_adapters = sample(base)
    assert not torch.equal(with_adapters, before)
    # --lora-merge: model/ is the base with the adapters folded in, transformer and CLIP-L.
    storage.download_dir(storage.join(run, "model"), tmp_path / "merged")
    merged = FluxPipeline.from_pretrained(tmp_path / "merged")
    merged.scheduler = base.scheduler  # the job saves the grids' sampler with it
    torch.testing.assert_close(sample(merged), with_adapters, rtol=1e-4, atol=1e-4)
    # The kohya file names the original FLUX.1 modules (its effect: tests/unit/test_flux1_family.py).
    kohya_file = next(p for p in adapters if p != "lora/pytorch_lora_weights.safetensors")
    kohya_keys = load_file(local / kohya_file.removeprefix("lora/")).keys()
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in kohya_keys
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in kohya_keys
    assert "lora_unet_single_blocks_0_linear2.lora_up.weight" in kohya_keys  # --lora-targets all
    assert "lora_unet_double_blocks_0_txt_mlp_2.alpha" in kohya_keys
    # --export-single-file: the merged transformer in BFL's layout.
    from dreambooth_job.families.bfl_layout import original_state
    from dreambooth_job.families.flux1_layout import FLUX1_LAYOUT

    storage.download_file(result["outputs"]["single_file"], tmp_path / "single.safetensors")
    single = load_file(tmp_path / "single.safetensors")
    expected = original_state(FLUX1_LAYOUT, merged.transformer.state_dict(), "test")
    assert set(single) == set(expected)
    assert all(torch.equal(single[key], expected[key]) for key in expected)
    assert all(key.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_", "lora_te1_"))
               for key in kohya_keys)

    # `generate` draws from the LoRA run with the family's sampler.
    drawn = f"s3://{bucket}/drawn-flux1/"
    outcome = CliRunner().invoke(main, [
        "generate", "--model", run, "--output", drawn, "--cache-dir", str(tmp_path / "cache"),
        "--steps", "2", "--prompt", "a sks dog", "--num-images", "1", "--seed", "5",
        "--guidance-scale", "3.5", "--log-format", "json"], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    record = json.loads(storage.read_bytes(drawn + "generation.json"))
    assert record["sampler"] == "flow-euler"
    assert "prompt-00-seed-5.png" in {f.relative_path for f in storage.list_files(drawn)}


def test_flux1_full_fine_tune_saves_a_pipeline_and_the_single_file(
        photos, bucket, tiny_flux1_model, tmp_path):
    """model/ loads and samples otherwise than the base; the single file is its transformer in
    BFL's layout, weight for weight (families/flux1_layout.py: tests/unit/test_flux1_family.py
    reads that layout back through diffusers' from_single_file at FLUX.1's own width)."""
    from safetensors.torch import load_file

    from dreambooth_job.families.bfl_layout import original_state
    from dreambooth_job.families.flux1_layout import FLUX1_LAYOUT

    run = f"s3://{bucket}/runs/flux1-full/"
    outcome = CliRunner().invoke(main, [
        "train", *SMALL, "--instance-data", photos, "--class-noun", "dog",
        "--base-model", str(tiny_flux1_model), "--class-data", f"s3://{bucket}/class-cache/",
        "--cache-dir", str(tmp_path / "cache"), "--identifier", "sks", "--output", run,
        "--export-single-file"], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    assert result["training"]["train_mode"] == "full" and result["training"]["final_prior_loss"] is not None
    local = tmp_path / "model"
    storage.download_dir(storage.join(run, "model"), local)
    tuned = FluxPipeline.from_pretrained(local)
    base = FluxPipeline.from_pretrained(tiny_flux1_model)
    assert not torch.equal(sample(tuned), sample(base))
    single = tmp_path / "single.safetensors"
    storage.download_file(result["outputs"]["single_file"], single)
    written = load_file(single)
    expected = original_state(FLUX1_LAYOUT, tuned.transformer.state_dict(), "test")
    assert set(written) == set(expected) and "single_blocks.0.linear1.bias" in written
    assert all(torch.equal(written[key], expected[key]) for key in expected)


def test_flux1_lora_resumed_after_sigterm_ends_with_the_uninterrupted_runs_adapters(
        photos, bucket, tiny_flux1_model, tmp_path):
    """CLIP-L's adapters train too; T5 stays frozen and out of the checkpoints."""
    steps = 6

    def job(output: str) -> list[str]:
        return ["train", *SMALL, "--max-train-steps", str(steps), "--sample-every", "0",
                "--progress-interval-seconds", "0", "--checkpoint-every", "2", "--instance-data", photos,
                "--class-noun", "dog", "--base-model", str(tiny_flux1_model), "--identifier", "sks",
                "--class-data", f"s3://{bucket}/class-cache/", "--cache-dir", str(tmp_path / "cache"),
                "--train-mode", "lora", "--lora-rank", "4", "--train-text-encoder",
                "--output", f"s3://{bucket}/{output}/", "--log-format", "json"]

    def adapters(output: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        local = tmp_path / output / "lora.safetensors"
        storage.download_file(f"s3://{bucket}/{output}/lora/pytorch_lora_weights.safetensors", local)
        return load_file(local)

    reference = JobProcess(job("flux1-reference"))
    assert reference.wait() == ExitCode.OK, reference.output[-3000:]
    stopped = JobProcess(job("flux1-preempted"))
    stopped.wait_for(rf"step 3/{steps}\b")
    stopped.process.terminate()
    assert stopped.wait() == ExitCode.TERMINATED, stopped.output[-3000:]
    newest = CheckpointStore(f"s3://{bucket}/flux1-preempted/", keep=2).list()[0]
    assert 2 <= newest.step < steps

    resumed = JobProcess(job("flux1-preempted"))
    assert resumed.wait() == ExitCode.OK, resumed.output[-3000:]
    assert f"resuming from checkpoint {newest.uri} at step {newest.step}" in resumed.output
    expected, actual = adapters("flux1-reference"), adapters("flux1-preempted")
    assert expected.keys() == actual.keys() and any(k.startswith("text_encoder.") for k in expected)
    mismatched = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not mismatched, f"{len(mismatched)} tensors differ, e.g. {mismatched[:3]}"
