"""The family hooks the Trainer, sampling and generate call instead of naming a module or a
scheduler: the DDPM objective is diffusers' arithmetic on the same draws, latents are the VAE's
scaled (and shifted where the VAE says so), and the sampler and initial noise are the family's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from dreambooth_job import families
from dreambooth_job.families.base import ModelFamily
from dreambooth_job.families.objective import DdpmObjective
from dreambooth_job.generation import sampling
from dreambooth_job.training import base_models


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_model):
    base = base_models.resolve_base_model(str(tiny_model), "/nonexistent")
    return base_models.load_pipeline(base, "/nonexistent")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_ddpm_objective_is_diffusers_add_noise_and_target_on_the_same_draws(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              prediction_type=prediction_type)
    objective = DdpmObjective(scheduler)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    batch = objective.draw(latents, torch.Generator().manual_seed(5), "cpu")

    generator = torch.Generator().manual_seed(5)  # the draws in the Trainer's former order
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (3,), generator=generator)
    assert torch.equal(batch.timesteps, timesteps)
    assert torch.equal(batch.noisy, scheduler.add_noise(latents, noise, timesteps))
    velocity = scheduler.get_velocity(latents, noise, timesteps)
    expected = velocity if prediction_type == "v_prediction" else noise
    assert torch.equal(batch.target, expected)
    assert objective.prediction_type == prediction_type and batch.weights is None


def test_the_per_sample_loss_is_each_samples_mean_squared_error_weighted_when_asked():
    objective = DdpmObjective(DDPMScheduler())
    prediction, target = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    batch = objective.draw(target, torch.Generator().manual_seed(0), "cpu")._replace(target=target)
    errors = objective.per_sample_loss(prediction, batch)
    assert torch.equal(errors, F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3)))
    weighted = objective.per_sample_loss(prediction, batch._replace(weights=torch.tensor([2.0, 0.0])))
    assert torch.equal(weighted, errors * torch.tensor([2.0, 0.0]))


def test_the_family_reads_the_objective_from_the_base_models_scheduler(tiny_pipeline):
    family = families.for_pipeline(tiny_pipeline)
    objective = family.training_objective(tiny_pipeline)
    assert objective.prediction_type == tiny_pipeline.scheduler.config.prediction_type
    schedule = tiny_pipeline.scheduler.config
    assert objective.scheduler.config.num_train_timesteps == schedule.num_train_timesteps


def test_the_denoiser_is_the_families_module_and_predict_is_its_output(tiny_pipeline):
    family = families.for_pipeline(tiny_pipeline)
    denoiser = family.denoiser(tiny_pipeline)
    assert denoiser is getattr(tiny_pipeline, family.denoiser_name)
    ids = family.tokenize(tiny_pipeline, "a sks dog")
    with torch.no_grad():
        embeddings = family.encode_prompt(family.text_encoders(tiny_pipeline), ids, "cpu")
        conditioning = family.denoiser_conditioning(embeddings, torch.float32)
        noisy = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        expected = denoiser(noisy, torch.tensor([10]), **conditioning).sample
        assert torch.equal(family.predict(denoiser, noisy, torch.tensor([10]), conditioning), expected)
    other, replacement = copy.copy(tiny_pipeline), copy.deepcopy(denoiser)
    family.set_denoiser(other, replacement)
    assert family.denoiser(other) is replacement and family.denoiser(tiny_pipeline) is denoiser


def test_latents_are_the_vae_sample_scaled_and_shifted_only_where_the_vae_has_a_shift(tiny_pipeline):
    family = families.for_pipeline(tiny_pipeline)
    vae = tiny_pipeline.vae
    sample = torch.randn(2, 4, 8, 8)
    assert getattr(vae.config, "shift_factor", None) is None
    assert torch.equal(family.encode_latents(vae, sample), sample * vae.config.scaling_factor)
    shifted = copy.deepcopy(vae)
    shifted.register_to_config(shift_factor=0.25)
    assert torch.equal(family.encode_latents(shifted, sample), (sample - 0.25) * vae.config.scaling_factor)


def test_the_sampler_is_the_familys_built_from_the_pipelines_scheduler_config(tiny_pipeline):
    pipe = copy.copy(tiny_pipeline)
    family = families.for_pipeline(pipe)
    sampling.fast_pipeline(pipe)
    assert type(pipe.scheduler).__name__ == family.sampler_name() == sampling.sampler_name(pipe)
    assert pipe.scheduler.config.beta_schedule == tiny_pipeline.scheduler.config.beta_schedule
    for name, class_name in family.samplers.items():
        assert type(family.sampling_scheduler(tiny_pipeline, name)).__name__ == class_name


def test_generated_images_start_from_the_familys_initial_noise(tiny_pipeline, monkeypatch):
    pipe = sampling.fast_pipeline(copy.copy(tiny_pipeline))
    family = families.for_pipeline(pipe)
    drawn, handed = [], []
    initial_noise = ModelFamily.initial_noise

    def record_noise(self, pipeline, resolution, generator):
        drawn.append(initial_noise(self, pipeline, resolution, generator))
        return drawn[-1]

    def record_latents(self, pipeline, prompts, *, latents, **kwargs):
        handed.append(latents)
        return [None] * len(prompts)

    monkeypatch.setattr(ModelFamily, "initial_noise", record_noise)
    monkeypatch.setattr(type(family), "generate", record_latents)
    sampling.generate_images(pipe, ["a", "b"], [3, 4], resolution=64, num_inference_steps=1,
                             guidance_scale=1.0, batch_size=2)
    assert len(drawn) == 2 and drawn[0].shape == (4, 32, 32)
    assert torch.equal(drawn[0], torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(handed[0], torch.stack(drawn).to(family.sampling_dtype(pipe)))


def test_generate_offers_every_familys_samplers_and_refuses_another_familys(tiny_model):
    """--sampler's choices are the families' (a new family's samplers need no edit elsewhere);
    auto is the family's first, the grids' sampler; a name the model's family lacks is exit 2."""
    from dreambooth_job.exit_codes import InvalidInputError
    from dreambooth_job.generation.generate_config import AUTO_SAMPLER, SAMPLERS, GenerateConfig
    from dreambooth_job.generation.run import use_sampler

    assert set(SAMPLERS) == {name for f in families.FAMILIES for name in f.samplers}
    assert GenerateConfig.__dataclass_fields__["sampler"].default == AUTO_SAMPLER
    pipe = families.detect(str(tiny_model)).load_pipeline(str(tiny_model), str(tiny_model))
    family = families.for_pipeline(pipe)
    assert use_sampler(pipe, family, AUTO_SAMPLER) == next(iter(family.samplers))
    assert type(pipe.scheduler).__name__ == family.sampler_name()
    assert use_sampler(pipe, family, "euler") == "euler"
    assert type(pipe.scheduler).__name__ == family.samplers["euler"]
    with pytest.raises(InvalidInputError, match="--sampler flow-euler is not one of this"):
        use_sampler(pipe, family, "flow-euler")
