"""FLUX.2 [klein] through the same job: the family is detected from the base model, and a LoRA run
with prior preservation (class images sampled by the frozen base) runs end to end against the real
S3 server; the diffusers LoRA file loads with Flux2KleinPipeline and changes what it samples, and the
kohya file has the same effect; a full run's single file is its transformer in BFL's layout.
result.json records the family and the licence the base model's card declares; `generate`, and the
Job `submit-generate` builds, draw from a LoRA and a full run; a LoRA run resumed after SIGTERM ends
with the uninterrupted run's adapters, bitwise. The tiny FLUX.2 [klein]-shaped pipeline.
(tests/helpers.py's `every_family` runs the SD tests of checkpoints, reruns, metrics and --evaluate
on klein too.)"""

from __future__ import annotations

import json
import shutil

import jsonschema
import kubernetes_validate
import pytest
import torch
import yaml
from click.testing import CliRunner
from diffusers import Flux2KleinPipeline, Flux2Transformer2DModel
from helpers import JobProcess, upload_photos
from safetensors.torch import load_file

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs import result as result_module
from dreambooth_job.storage import places as storage
from dreambooth_job.training import sizing
from dreambooth_job.training.checkpoint import CheckpointStore

SMALL = ["--resolution", "32", "--max-train-steps", "3", "--num-class-images", "2",
         "--sample-steps", "2", "--num-validation-images", "1", "--log-every", "1",
         "--sample-every", "3", "--validation-prompt", "a {identifier} {class_noun} on the beach",
         "--metrics-port", "0", "--learning-rate", "1e-2", "--log-format", "text"]


@pytest.fixture
def photos(bucket, photo_dir):
    return upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")


@pytest.fixture
def carded_model(bucket, tiny_flux2_klein_model, tmp_path) -> str:
    """The tiny model with a model card declaring klein base 4B's licence, as an s3:// prefix (the
    job reads the card from its downloaded copy)."""
    local = tmp_path / "carded-klein"
    shutil.copytree(tiny_flux2_klein_model, local)
    (local / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: diffusers\n---\n# klein\n")
    storage.upload_dir(local, f"s3://{bucket}/models/klein/")
    return f"s3://{bucket}/models/klein/"


def submitted_generate(run: str, output: str, tmp_path, monkeypatch) -> dict:
    """Run the Job `submit-generate --sizing flux2-klein-lora` builds for `run`: its container's
    args, here; generation.json of what it drew."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))  # --dry-run needs no cluster
    built = CliRunner().invoke(main, [
        "submit-generate", "--model", run, "--output", output, "--prompt",
        "a {identifier} {class_noun} at sea", "--num-images", "1", "--steps", "2",
        "--sizing", "flux2-klein-lora", "--dry-run"], catch_exceptions=False)
    assert built.exit_code == ExitCode.OK, built.output
    job = yaml.safe_load(built.output)
    kubernetes_validate.validate(job, "1.31.0", strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["memory"] == (
        sizing.PROFILES["flux2-klein-lora"].resources["requests"]["memory"])
    ran = CliRunner().invoke(main, [*container["args"], "--cache-dir", str(tmp_path / "cache")],
                             catch_exceptions=False)
    assert ran.exit_code == ExitCode.OK, ran.output[-3000:]
    assert "prompt-00-seed-0.png" in {f.relative_path for f in storage.list_files(output)}
    return json.loads(storage.read_bytes(output + "generation.json"))


def sample(pipe) -> torch.Tensor:
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    return pipe(prompt="a sks dog", height=32, width=32, num_inference_steps=2, latents=latents,
                guidance_scale=1.0, output_type="pt").images


def test_klein_lora_with_prior_preservation_loads_on_the_base(photos, bucket, tiny_flux2_klein_model,
                                                             carded_model, tmp_path, monkeypatch):
    run = f"s3://{bucket}/runs/klein-lora/"
    outcome = CliRunner().invoke(main, [
        "train", *SMALL, "--instance-data", photos, "--class-noun", "dog", "--output", run,
        "--base-model", carded_model, "--class-data", f"s3://{bucket}/class-cache/",
        "--cache-dir", str(tmp_path / "cache"), "--train-mode", "lora", "--lora-rank", "4",
        "--lora-targets", "all", "--export-single-file"],
        catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    jsonschema.validate(result, result_module.schema())
    assert result["base_model"] | {"fingerprint": None} == {
        "source": carded_model, "fingerprint": None, "prediction_type": "flow",
        "family": "flux2-klein", "license": "apache-2.0"}
    training = result["training"]
    assert result["status"] == "succeeded" and training["train_mode"] == "lora"
    assert training["steps_done"] == 3 and training["final_prior_loss"] is not None
    assert result["class_images"]["generated"] == 2
    # The validation grid of --sample-every 3, at the final step.
    assert [uri.rsplit("/", 1)[-1] for uri in result["outputs"]["samples"]] == ["step-000003.png"]
    # --identifier auto: a rare whole word of the Qwen BPE, one token after a space.
    assert result["identifier"]["chosen"] == "auto" and len(result["identifier"]["token_ids"]) == 1
    adapters = sorted(e["path"] for e in result["outputs"]["files"] if e["path"].startswith("lora/"))
    assert len(adapters) == 2 and "lora/pytorch_lora_weights.safetensors" in adapters
    # --guidance-scale and --save-precision auto: the family's, recorded resolved.
    assert (result["config"]["guidance_scale"], result["config"]["save_precision"]) == (4.0, "bf16")

    local = tmp_path / "lora"
    storage.download_dir(storage.join(run, "lora"), local)
    weights = load_file(local / "pytorch_lora_weights.safetensors")
    # --lora-targets all: the single-stream blocks too.
    assert any(key.startswith("transformer.single_transformer_blocks.") for key in weights)
    assert all(key.startswith(("transformer.transformer_blocks.", "transformer.single_transformer_blocks."))
               for key in weights)
    # --save-precision auto: the family's bf16.
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
    # --export-single-file of a LoRA run: the merged transformer, in BFL's layout, at the family's
    # bf16 (so a bf16 rounding of W + BA, not bitwise; the full run below checks the layout exactly).
    single = tmp_path / "single.safetensors"
    storage.download_file(result["outputs"]["single_file"], single)
    merged = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model)
    merged.transformer = Flux2Transformer2DModel.from_single_file(
        str(single), config=str(tiny_flux2_klein_model), subfolder="transformer")
    torch.testing.assert_close(sample(merged), with_adapters, rtol=0, atol=5e-3)

    # `generate` draws from the LoRA run with the family's sampler.
    drawn = f"s3://{bucket}/drawn/"
    outcome = CliRunner().invoke(main, [
        "generate", "--model", run, "--output", drawn, "--cache-dir", str(tmp_path / "cache"),
        "--steps", "2", "--prompt", "a sks dog", "--num-images", "1", "--seed", "5",
        "--log-format", "json"], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    record = json.loads(storage.read_bytes(drawn + "generation.json"))
    assert record["sampler"] == "flow-euler" and record["weights"] == "lora"
    assert record["guidance_scale"] == 4.0
    assert "prompt-00-seed-5.png" in {f.relative_path for f in storage.list_files(drawn)}
    submitted = submitted_generate(run, f"s3://{bucket}/submitted/", tmp_path, monkeypatch)
    assert submitted["weights"] == "lora" and submitted["sampler"] == "flow-euler"


def test_klein_full_fine_tune_saves_a_pipeline_and_the_single_file(
        photos, bucket, tiny_flux2_klein_model, tmp_path, monkeypatch):
    run = f"s3://{bucket}/runs/klein-full/"
    outcome = CliRunner().invoke(main, [
        "train", *SMALL, "--instance-data", photos, "--class-noun", "dog", "--output", run,
        "--base-model", str(tiny_flux2_klein_model), "--class-data", f"s3://{bucket}/class-cache/",
        "--cache-dir", str(tmp_path / "cache"), "--identifier", "sks", "--export-single-file",
        "--save-precision", "fp32"],
        catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    jsonschema.validate(result, result_module.schema())
    assert result["training"]["train_mode"] == "full" and result["training"]["final_prior_loss"] is not None
    assert result["base_model"]["family"] == "flux2-klein"
    assert result["base_model"]["license"] is None  # the tiny model has no card
    local = tmp_path / "model"
    storage.download_dir(storage.join(run, "model"), local)
    tuned = Flux2KleinPipeline.from_pretrained(local)
    base = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model)
    assert not torch.equal(sample(tuned), sample(base))
    # The single file: the trained transformer in BFL's layout, read back by diffusers exactly.
    single = tmp_path / "single.safetensors"
    storage.download_file(result["outputs"]["single_file"], single)
    loaded = Flux2Transformer2DModel.from_single_file(str(single), config=str(local),
                                                      subfolder="transformer").state_dict()
    trained = tuned.transformer.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[key], trained[key]) for key in trained)

    # `generate` and the Job `submit-generate` builds draw from the full run's model/.
    drawn = f"s3://{bucket}/drawn-full/"
    outcome = CliRunner().invoke(main, [
        "generate", "--model", run, "--output", drawn, "--cache-dir", str(tmp_path / "cache"),
        "--steps", "2", "--prompt", "a sks dog", "--num-images", "2", "--seed", "5"],
        catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    record = json.loads(storage.read_bytes(drawn + "generation.json"))
    assert record["weights"] == "model" and record["resolution"] == 32 and record["seeds"] == [5, 6]
    submitted = submitted_generate(run, f"s3://{bucket}/submitted-full/", tmp_path, monkeypatch)
    assert submitted["weights"] == "model" and submitted["sampler"] == "flow-euler"


def test_klein_lora_resumed_after_sigterm_ends_with_the_uninterrupted_runs_adapters(
        photos, bucket, tiny_flux2_klein_model, tmp_path):
    steps = 8

    def job(output: str) -> list[str]:
        # The last of a repeated option wins: SMALL's settings but these.
        return ["train", *SMALL, "--train-mode", "lora", "--lora-rank", "4", "--identifier", "sks",
                "--max-train-steps", str(steps), "--checkpoint-every", "3",
                "--progress-interval-seconds", "0", "--instance-data", photos, "--class-noun", "dog",
                "--base-model", str(tiny_flux2_klein_model), "--class-data", f"s3://{bucket}/class-cache/",
                "--cache-dir", str(tmp_path / "cache"), "--output", f"s3://{bucket}/{output}/",
                "--log-format", "json"]

    def adapters(output: str) -> dict[str, torch.Tensor]:
        local = tmp_path / output
        storage.download_dir(f"s3://{bucket}/{output}/lora/", local)
        return {f"{file.name}:{name}": tensor for file in sorted(local.glob("*.safetensors"))
                for name, tensor in load_file(file).items()}

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
    expected, actual = adapters("reference"), adapters("preempted")
    assert expected.keys() == actual.keys() and len(expected) > 0
    # CPU kernels are deterministic here: the resumed adapters (both files) match bitwise.
    mismatched = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not mismatched, f"{len(mismatched)} tensors differ, e.g. {mismatched[:3]}"
