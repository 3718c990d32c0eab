"""--train-mode lora end to end: the same job (photos in S3, prior preservation, grids, checkpoints,
SIGTERM, reruns) training LoRA adapters on a frozen base. The real S3 server, the tiny pipeline."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from helpers import JobProcess, upload_photos
from safetensors.torch import load_file
from transformers import CLIPTextModel

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs import result as result_module
from dreambooth_job.storage import places as storage
from dreambooth_job.training import lora_adapters
from dreambooth_job.training.checkpoint import CheckpointStore

RANK = 4
SMALL = ["--train-mode", "lora", "--lora-rank", str(RANK), "--resolution", "64",
         "--max-train-steps", "4", "--num-class-images", "3", "--sample-steps", "2",
         "--num-validation-images", "1", "--log-every", "2", "--sample-every", "2",
         "--validation-prompt", "a {identifier} {class_noun} on the beach", "--metrics-port", "0"]


@pytest.fixture
def photos(bucket, photo_dir):
    return upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")


def read_result(uri):
    return json.loads(storage.read_bytes(storage.join(uri, "result.json")))


def is_target(name: str, targets) -> bool:
    layer = name.rsplit(".", 1)[0]  # the parameter's layer: "...attn1.to_q" of "...attn1.to_q.weight"
    return any(layer == t or layer.endswith("." + t) for t in targets)


def test_lora_run_trains_only_adapters_with_prior_preservation(photos, bucket, tiny_model, tmp_path):
    run = f"s3://{bucket}/runs/lora-dog/"

    def train(*extra):
        return CliRunner().invoke(main, [
            "train", *SMALL, "--instance-data", photos, "--class-noun", "dog", "--output", run,
            "--base-model", str(tiny_model), "--class-data", f"s3://{bucket}/class-cache/",
            "--cache-dir", str(tmp_path / "cache"), "--log-format", "text",
            # model/ as well as lora/, in fp32: to compare the merged weights with the base's
            "--lora-merge", "--save-precision", "fp32", *extra],
            catch_exceptions=False)

    outcome = train()
    assert outcome.exit_code == ExitCode.OK, outcome.output
    result = read_result(run)
    jsonschema.validate(result, result_module.schema())
    training = result["training"]
    assert result["status"] == "succeeded" and training["steps_done"] == 4
    # --learning-rate auto: recorded as given, trained at LoRA's default rate.
    assert result["config"]["learning_rate"] is None and training["learning_rate"] == 1e-4
    assert training["train_mode"] == "lora" and training["final_prior_loss"] is not None
    assert result["class_images"]["generated"] == 3
    base = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    assert training["trainable_parameters"] == lora_adapters.lora_parameter_count(
        base, RANK, lora_adapters.DEFAULT_UNET_TARGETS) < sum(p.numel() for p in base.parameters()) / 10
    assert sorted(uri.rsplit("/", 1)[-1] for uri in result["outputs"]["samples"]) == [
        "step-000002.png", "step-000004.png"]

    # The adapters are published in lora/ (diffusers and kohya files, tests/unit/test_outputs.py);
    # with --lora-merge, model/ is base + adapters merged: the target layers moved, nothing else.
    published = {entry["path"] for entry in result["outputs"]["files"]}
    assert {"lora/pytorch_lora_weights.safetensors", "lora/dog.safetensors"} <= published
    assert all(storage.exists(storage.join(run, path)) for path in published)
    local = tmp_path / "downloaded"
    storage.download_dir(storage.join(run, "model"), local)
    tuned = StableDiffusionPipeline.from_pretrained(local)
    base_weights = dict(base.named_parameters())
    changed = {name for name, p in tuned.unet.named_parameters() if not torch.equal(p, base_weights[name])}
    assert changed and all(is_target(name, lora_adapters.DEFAULT_UNET_TARGETS) for name in changed), changed
    text_encoder = CLIPTextModel.from_pretrained(tiny_model / "text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(tuned.text_encoder.parameters(), text_encoder.parameters()))

    # A rerun is the same run with `auto` spelled out as what it resolves to; not in another mode.
    assert train("--learning-rate", "1e-4", "--lora-alpha", str(RANK)).exit_code == ExitCode.OK
    assert read_result(run) == result, "a completed run of the same config is left alone"
    other = train("--train-mode", "full")
    assert other.exit_code == ExitCode.INVALID_INPUT
    assert "differs in: learning_rate, train_mode" in other.output


# --- checkpoints, SIGTERM and reruns, as tests/job/test_resilience.py does them for full runs ----
STEPS = 12
COMMON = ["train", "--train-mode", "lora", "--lora-rank", str(RANK), "--train-text-encoder",
          "--no-cache-latents", "--class-noun", "dog", "--resolution", "64",
          "--max-train-steps", str(STEPS), "--num-class-images", "2", "--sample-steps", "2",
          "--num-validation-images", "1", "--validation-prompt", "a {identifier} {class_noun}",
          "--log-every", "1", "--progress-interval-seconds", "0", "--learning-rate", "1e-3",
          "--checkpoint-every", "4", "--metrics-port", "0", "--log-format", "json",
          "--lora-merge"]  # compared through the merged model/ (fp16: equal when fp32 is equal)


@pytest.fixture
def job(bucket, photos, tiny_model, tmp_path):
    def args(output: str, *extra: str) -> list[str]:
        return [*COMMON, "--instance-data", photos, "--base-model", str(tiny_model),
                "--class-data", f"s3://{bucket}/class-cache/", "--cache-dir", str(tmp_path / "cache"),
                "--output", f"s3://{bucket}/{output}/", *extra]

    return args


def final_weights(output_uri: str, tmp_path) -> dict[str, torch.Tensor]:
    local = tmp_path / output_uri.rstrip("/").rsplit("/", 1)[-1]
    weights = {}
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        storage.download_file(storage.join(output_uri, "model", part), local / part)
        weights.update({f"{part}:{k}": v for k, v in load_file(local / part).items()})
    return weights


def test_sigterm_and_resume_give_the_uninterrupted_lora_bitwise(job, bucket, tiny_model, tmp_path):
    reference = JobProcess(job("reference"))
    assert reference.wait() == ExitCode.OK, reference.output[-3000:]

    run = f"s3://{bucket}/preempted/"
    stopped = JobProcess(job("preempted"))
    stopped.wait_for(rf"step 6/{STEPS}\b")
    stopped.process.terminate()
    assert stopped.wait() == ExitCode.TERMINATED, stopped.output[-3000:]
    newest = CheckpointStore(run, keep=2).list()[0]
    local = tmp_path / "checkpoint"
    assert CheckpointStore(run, keep=2).fetch(newest, local), "checkpoint verifies"

    # The checkpoint holds the adapters (UNet, text encoder) and their optimizer state only.
    unet_state, text_state = load_file(local / "model.safetensors"), load_file(local / "model_1.safetensors")
    assert all(".lora_A." in k or ".lora_B." in k for k in [*unet_state, *text_state])
    base_unet_bytes = (tiny_model / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    checkpoint_bytes = sum(f.stat().st_size for f in local.iterdir() if f.is_file())
    print(f"LoRA rank {RANK} checkpoint: {checkpoint_bytes} bytes; base UNet alone {base_unet_bytes} bytes")
    assert checkpoint_bytes < base_unet_bytes / 2

    # The mode and the LoRA options are the run's identity: another value exits 2 naming them.
    for extra, named in ((("--train-mode", "full"), "train_mode"),
                         (("--lora-rank", "8"), "lora_alpha, lora_rank"),
                         (("--lora-target-modules", "to_q"), "lora_target_modules")):
        conflicting = JobProcess(job("preempted", *extra))
        assert conflicting.wait() == ExitCode.INVALID_INPUT, conflicting.output[-3000:]
        assert f"differs in: {named})" in conflicting.output
        assert "phase download" not in conflicting.output

    # The same LoRA options spelled out (alpha = rank, as auto resolves it) resume.
    resumed = JobProcess(job("preempted", "--lora-alpha", str(RANK)))
    assert resumed.wait() == ExitCode.OK, resumed.output[-3000:]
    assert f"resuming from checkpoint {newest.uri} at step {newest.step}" in resumed.output
    expected = final_weights(f"s3://{bucket}/reference/", tmp_path / "a")
    got = final_weights(run, tmp_path / "b")
    assert expected.keys() == got.keys()
    mismatched = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not mismatched, f"{len(mismatched)} tensors differ, e.g. {mismatched[:3]}"
    assert read_result(run)["training"]["resumed_from_step"] == newest.step
