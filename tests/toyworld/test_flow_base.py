"""The toy world's flow-matching base (toyworld/flow_base.py): a FLUX.2 [klein]-shaped pipeline
shipped like the Stable Diffusion-shaped one, loaded by the job's own loader, drawing the world;
its recorded command restarts the same training run."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from diffusers import Flux2KleinPipeline

from dreambooth_job import families
from dreambooth_job.config.subject_identifier import choose_identifier
from dreambooth_job.toyworld import bases, experiment, features, flow_base, measure, world

BASE = bases.ASSET_FLOW_BASE_MODEL


def test_shipped_flow_base_is_complete_and_small():
    assert json.loads((BASE / "model_index.json").read_text())["_class_name"] == "Flux2KleinPipeline"
    recipe = json.loads((BASE / "train.json").read_text())
    assert recipe["recipe"]["seed"] == 0 and recipe["steps_done"] > 0
    assert "flow_base" in recipe["command"]
    assert sum(p.stat().st_size for p in BASE.rglob("*") if p.is_file()) < 2 * 2**20


def test_flow_base_loads_as_klein_and_draws_the_world_losslessly():
    pipe = experiment.load(BASE)
    assert isinstance(pipe, Flux2KleinPipeline)
    family = families.for_pipeline(pipe)
    assert {family.denoiser(pipe).dtype, pipe.text_encoder.dtype, pipe.vae.dtype} == {torch.float32}
    # The VAE with the world's batch-norm statistics: the job's latents decode back to the picture.
    images, _ = world.dataset(8, seed=5)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        latents = family.encode_latents(pipe.vae, pipe.vae.encode(pixels).latent_dist.mean)
        decoded = pipe.vae.decode(pipe._unpatchify_latents(
            latents * torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
            + pipe.vae.bn.running_mean.view(1, -1, 1, 1))).sample
    assert latents.shape == (8, 16, 8, 8)
    assert float((decoded - pixels).abs().max()) < 1e-3
    # The world's words are single tokens, and --identifier auto finds a word no caption uses.
    token = choose_identifier(pipe.tokenizer).token
    assert all(token not in caption.split() for caption in flow_base.world_captions())
    assert len(pipe.tokenizer(" background", add_special_tokens=False).input_ids) == 1


@pytest.mark.slow
def test_flow_base_draws_the_requested_background():
    pipe = experiment.load(BASE)
    prompts = [world.caption("ball", "red", b) for b in world.BACKGROUNDS] * 2
    from dreambooth_job.generation import sampling

    pictures = sampling.generate_images(pipe, prompts, list(range(len(prompts))), resolution=world.SIZE,
                                        num_inference_steps=10, guidance_scale=4.0, batch_size=6)
    found = [features.features(p).background for p in pictures]
    assert sum(f == b for f, b in zip(found, list(world.BACKGROUNDS) * 2)) >= 5  # chance: 2 of 6


@pytest.mark.slow
def test_the_recorded_command_restarts_the_shipped_run(tmp_path):
    flow_base.main(["--output", str(tmp_path), "--steps", "2"])
    with open(BASE / "loss.csv") as shipped, open(tmp_path / "loss.csv") as again:
        assert list(csv.reader(again)) == list(csv.reader(shipped))[:3]  # header and 2 steps


@pytest.mark.slow
def test_the_ablation_on_the_flow_base_trains_its_transformer_through_the_job(tmp_path):
    ablation = experiment.Ablation(
        output=tmp_path, base="flow", seeds=[0], max_train_steps=2, num_class_images=1,
        eval_size=measure.EvalSize(subject_images=1, context_images=1, class_images=2), grids=False)
    metrics = experiment.run(ablation)
    assert metrics["settings"]["base"] == "flow" and metrics["settings"]["base_model"] == str(BASE)
    assert metrics["settings"]["lora_target_modules"] == list(bases.FLOW_LORA_TARGETS)
    for variant in experiment.VARIANTS:
        run = json.loads((tmp_path / "seed-0" / variant / "result.json").read_text())
        assert run["status"] == "succeeded" and run["config"]["base_model"] == str(BASE)
        assert (tmp_path / "seed-0" / variant / "model" / "transformer").is_dir()
    assert "--train-mode full, --base flow" in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize("command", ["toy-world", "demo"])
def test_toy_world_and_demo_take_the_base_by_name(command, tmp_path):
    from click.testing import CliRunner

    from dreambooth_job.cli import main

    assert "flow" in CliRunner().invoke(main, [command, "--help"]).output
    result = CliRunner().invoke(main, [command, "--base", "dit", "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--base" in result.output and "dit" in result.output
    assert not (tmp_path / "out").exists()
