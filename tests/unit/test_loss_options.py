"""The loss and noise options the objectives own (families/objective.py): min-SNR weights equal a
hand computation for epsilon and v targets and weigh the subject photos only; flow matching's
timestep sampling and loss weighting are diffusers' functions on the same generator; offset noise
is added after the timesteps as specified; and each objective refuses, in one line, the options
that do not apply to it (every family, through its `training_objective`)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from dreambooth_job import families
from dreambooth_job.config import train_config as cfg
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families.objective import DdpmObjective, FlowMatchingObjective, ObjectiveOptions
from dreambooth_job.training import base_models

LATENTS = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def ddpm(prediction_type: str = "epsilon", **options) -> DdpmObjective:
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type=prediction_type)
    return DdpmObjective(scheduler, ObjectiveOptions(**options))


def flow(**options) -> tuple[FlowMatchingObjective, FlowMatchEulerDiscreteScheduler]:
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    objective = FlowMatchingObjective(scheduler.timesteps.clone(),
                                      scheduler.sigmas[:len(scheduler.timesteps)].clone(),
                                      ObjectiveOptions(**options))
    return objective, scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_equal_a_hand_computation(prediction_type):
    objective = ddpm(prediction_type, snr_gamma=5.0)
    timesteps = torch.tensor([0, 10, 100, 400, 999])
    # By hand, in float64 from the scaled-linear betas: SNR(t) = abar_t / (1 - abar_t) (the
    # scheduler's float32 abar differs from it by up to 3e-5 relative, at t = 0).
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, dim=0)
    expected = []
    for t in timesteps.tolist():
        snr = abar[t].item() / (1 - abar[t].item())
        weight = min(snr, 5.0) / snr
        expected.append(weight + 1 if prediction_type == "v_prediction" else weight)
    weights = objective.loss_weights(timesteps)
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float32), rtol=1e-4, atol=0)
    # Low noise (large SNR) is weighed down to gamma / SNR; high noise keeps weight 1 (v: 2).
    base = weights - 1 if prediction_type == "v_prediction" else weights
    assert base[0] < 0.01 and base[-1] == 1.0

    # The step draws the same noise, timesteps and targets as without the option, weights added.
    batch = objective.draw(LATENTS, torch.Generator().manual_seed(5), "cpu")
    plain = ddpm(prediction_type).draw(LATENTS, torch.Generator().manual_seed(5), "cpu")
    assert torch.equal(batch.noisy, plain.noisy) and torch.equal(batch.target, plain.target)
    torch.testing.assert_close(batch.weights, objective.loss_weights(batch.timesteps))


def test_min_snr_weights_the_subject_photos_only_flow_weights_every_sample():
    prediction = torch.zeros_like(LATENTS)
    objective = ddpm(snr_gamma=1.0)
    batch = objective.draw(LATENTS, torch.Generator().manual_seed(2), "cpu")
    plain = objective.per_sample_loss(prediction, batch._replace(weights=None))
    errors = objective.per_sample_loss(prediction, batch, instances=2)
    # diffusers' DreamBooth scripts: "snr for instance loss only"; the prior loss unweighted.
    torch.testing.assert_close(errors[:2], plain[:2] * batch.weights[:2])
    assert torch.equal(errors[2:], plain[2:])

    objective, _ = flow(flow_weighting="cosmap")
    batch = objective.draw(LATENTS, torch.Generator().manual_seed(2), "cpu")
    errors = objective.per_sample_loss(prediction, batch, instances=2)
    # diffusers' FLUX DreamBooth scripts weigh the prior samples' loss too.
    torch.testing.assert_close(errors, objective.per_sample_loss(prediction, batch._replace(weights=None))
                               * batch.weights)


@pytest.mark.parametrize("sampling, scheme", [("uniform", "none"), ("logit-normal", "logit_normal"),
                                              ("mode", "mode")])
def test_flow_timestep_sampling_is_diffusers_density_on_the_same_generator(sampling, scheme):
    logit = scheme == "logit_normal"
    objective, scheduler = flow(timestep_sampling=sampling, logit_mean=0.3 if logit else 0.0,
                                logit_std=0.8 if logit else 1.0, mode_scale=0.9 if scheme == "mode" else 1.29)
    batch = objective.draw(LATENTS, torch.Generator().manual_seed(7), "cpu")
    # diffusers' train_dreambooth_lora_flux2_klein.py: noise, then u, then the indexed timestep.
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(LATENTS.shape, generator=generator)
    u = compute_density_for_timestep_sampling(scheme, 4, logit_mean=0.3, logit_std=0.8, mode_scale=0.9,
                                              generator=generator)
    timesteps = scheduler.timesteps[(u * scheduler.config.num_train_timesteps).long()]
    assert torch.equal(batch.timesteps, timesteps)
    sigmas = scheduler.sigmas[[(scheduler.timesteps == t).nonzero().item() for t in timesteps]]
    torch.testing.assert_close(batch.noisy, (1 - sigmas.reshape(-1, 1, 1, 1)) * LATENTS
                               + sigmas.reshape(-1, 1, 1, 1) * noise)
    assert batch.weights is None


@pytest.mark.parametrize("weighting, scheme", [("sigma-sqrt", "sigma_sqrt"), ("cosmap", "cosmap")])
def test_flow_weighting_is_diffusers_sd3_weighting_of_the_samples_sigmas(weighting, scheme):
    objective, scheduler = flow(flow_weighting=weighting)
    batch = objective.draw(LATENTS, torch.Generator().manual_seed(11), "cpu")
    sigmas = scheduler.sigmas[[(scheduler.timesteps == t).nonzero().item() for t in batch.timesteps]]
    weighting_ = compute_loss_weighting_for_sd3(scheme, sigmas.reshape(-1, 1, 1, 1))
    prediction = torch.randn(LATENTS.shape, generator=torch.Generator().manual_seed(12))
    # The FLUX trainers' loss: mean over each sample of weighting * squared error.
    expected = torch.mean((weighting_.float() * (prediction - batch.target) ** 2).reshape(4, -1), 1)
    torch.testing.assert_close(objective.per_sample_loss(prediction, batch), expected)
    if scheme == "cosmap":
        torch.testing.assert_close(batch.weights, 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2)))


def test_noise_offset_adds_a_per_channel_normal_draw_after_the_timesteps():
    objective = ddpm(noise_offset=0.1)
    batch = objective.draw(LATENTS, torch.Generator().manual_seed(3), "cpu")
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(LATENTS.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (4,), generator=generator)
    offset = torch.randn((4, 4, 1, 1), generator=generator)
    noise = noise + 0.1 * offset
    assert torch.equal(batch.timesteps, timesteps)
    assert torch.equal(batch.target, noise)  # epsilon: the offset noise is the target
    assert torch.equal(batch.noisy, objective.scheduler.add_noise(LATENTS, noise, timesteps))

    objective, _ = flow(noise_offset=0.1)
    batch = objective.draw(LATENTS, torch.Generator().manual_seed(3), "cpu")
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(LATENTS.shape, generator=generator)
    torch.rand((4,), generator=generator)
    noise = noise + 0.1 * torch.randn((4, 4, 1, 1), generator=generator)
    assert torch.equal(batch.target, noise - LATENTS)


@pytest.mark.parametrize("build, options, named", [
    (ddpm, {"timestep_sampling": "logit-normal"}, "--timestep-sampling logit-normal"),
    (ddpm, {"flow_weighting": "cosmap"}, "--flow-weighting cosmap"),
    (flow, {"snr_gamma": 5.0}, "--snr-gamma 5.0"),
    (flow, {"logit_mean": 0.5}, "--logit-mean has no effect without --timestep-sampling logit-normal"),
    (flow, {"logit_std": 2.0, "timestep_sampling": "mode"}, "--logit-std has no effect"),
    (ddpm, {"mode_scale": 1.0}, "--mode-scale has no effect without --timestep-sampling mode"),
])
def test_an_objective_refuses_the_options_of_another(build, options, named):
    with pytest.raises(InvalidInputError, match=named) as refused:
        build(**options)
    assert "\n" not in refused.value.message


@pytest.mark.parametrize("values, named", [
    ({"mode_scale": 2.0, "timestep_sampling": "mode"}, "--mode-scale"),
    ({"snr_gamma": -1.0}, "--snr-gamma"),
    ({"noise_offset": 2.0}, "--noise-offset"),
    ({"logit_std": 0.0, "timestep_sampling": "logit-normal"}, "--logit-std"),
    ({"flow_weighting": "sigma_sqrt"}, "--flow-weighting"),
])
def test_out_of_bounds_values_name_the_option(values, named):
    with pytest.raises(InvalidInputError, match=named):
        cfg.TrainConfig(**values)


@pytest.mark.parametrize("model, flow_family", [("tiny_model", False), ("tiny_sdxl_model", False),
                                                ("tiny_flux2_klein_model", True),
                                                ("tiny_flux1_model", True)])
def test_each_family_builds_its_objective_with_the_options_and_refuses_the_others(model, flow_family,
                                                                                   request):
    base = base_models.resolve_base_model(str(request.getfixturevalue(model)), "/nonexistent")
    pipeline = base_models.load_pipeline(base, "/nonexistent")
    family = families.for_pipeline(pipeline)
    applies = ObjectiveOptions(noise_offset=0.1, **({"flow_weighting": "cosmap"} if flow_family
                                                    else {"snr_gamma": 5.0}))
    objective = family.training_objective(pipeline, applies)
    batch = objective.draw(LATENTS, torch.Generator().manual_seed(0), "cpu")
    plain = family.training_objective(pipeline).draw(LATENTS, torch.Generator().manual_seed(0), "cpu")
    assert batch.weights is not None and not torch.equal(batch.target, plain.target)
    other = {"snr_gamma": 5.0} if flow_family else {"flow_weighting": "cosmap"}
    with pytest.raises(InvalidInputError, match=f"--{next(iter(other)).replace('_', '-')} "):
        family.training_objective(pipeline, ObjectiveOptions(**other))
