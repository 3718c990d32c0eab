"""What a denoiser learns to predict: how one training step turns clean latents into noisy inputs,
timesteps and a target, and how the prediction's error is weighed. A family picks its objective
(`ModelFamily.training_objective`); the Trainer only calls `draw` and `per_sample_loss`.

    objective = family.training_objective(pipeline, ObjectiveOptions.from_config(config))  # DDPM: SD, SDXL
    batch = objective.draw(latents, generator, device)      # noise, timesteps, noisy inputs, target
    prediction = family.predict(denoiser, batch.noisy, batch.timesteps, conditioning)
    errors = objective.per_sample_loss(prediction, batch, instances=4)   # (batch,), weighted

`FlowMatchingObjective` is the rectified-flow velocity objective (FLUX.2 [klein], FLUX.1): its own
timestep sampling, interpolation and target; `draw` keeps the order of the random draws.

`ObjectiveOptions` are the run's loss and noise options (--snr-gamma, --noise-offset,
--timestep-sampling, --flow-weighting and its parameters); each objective refuses, in one line,
those that do not apply to it (InvalidInputError, exit 2).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from dreambooth_job.exit_codes import InvalidInputError

# --timestep-sampling and --flow-weighting values, and the `weighting_scheme` of diffusers'
# compute_density_for_timestep_sampling / compute_loss_weighting_for_sd3 each stands for.
TIMESTEP_SAMPLING_SCHEMES = {"uniform": "none", "logit-normal": "logit_normal", "mode": "mode"}
FLOW_WEIGHTING_SCHEMES = {"none": "none", "sigma-sqrt": "sigma_sqrt", "cosmap": "cosmap"}


class ObjectiveOptions(NamedTuple):
    """The loss and noise options of a run; the defaults are the plain objective's."""

    snr_gamma: float = 0.0
    """Min-SNR weighting's gamma (Hang et al. 2023); 0: off. DDPM only."""
    noise_offset: float = 0.0
    """Offset noise's scale: noise += X * randn(batch, channels, 1, 1); 0: off."""
    timestep_sampling: str = "uniform"
    """How flow matching draws its timesteps (TIMESTEP_SAMPLING_SCHEMES)."""
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    flow_weighting: str = "none"
    """How flow matching weighs each sample's loss by its noise level (FLOW_WEIGHTING_SCHEMES)."""

    @classmethod
    def from_config(cls, config) -> ObjectiveOptions:
        """The options as a TrainConfig (or anything with those attributes) holds them."""
        return cls(**{name: getattr(config, name) for name in cls._fields})


PLAIN = ObjectiveOptions()
"""The plain objective: no loss weighting, no offset noise, uniform timesteps."""

# The --timestep-sampling parameters and the sampling that reads each.
SAMPLING_PARAMETERS = {"logit_mean": "logit-normal", "logit_std": "logit-normal", "mode_scale": "mode"}


def refuse_unread_parameters(options: ObjectiveOptions) -> None:
    """InvalidInputError for a sampling parameter set where the sampling does not read it (it
    would be ignored silently)."""
    for name, sampling in SAMPLING_PARAMETERS.items():
        if getattr(options, name) != getattr(PLAIN, name) and options.timestep_sampling != sampling:
            raise InvalidInputError(f"--{name.replace('_', '-')} has no effect without "
                                    f"--timestep-sampling {sampling} (got {options.timestep_sampling})")


class NoisedBatch(NamedTuple):
    """One step's denoiser inputs and what it must predict."""

    noisy: Any
    """The denoiser's input: the clean latents with noise at `timesteps`."""
    timesteps: Any
    """(batch,): what the denoiser is told about the noise level."""
    target: Any
    """What the denoiser's output is compared with."""
    weights: Any = None
    """(batch,) per-sample loss weights; None weighs all samples alike."""


class TrainingObjective(ABC):
    """One family's training objective (stateless but for its schedule)."""

    prediction_type: str
    """What the denoiser predicts ("epsilon", "v_prediction", "flow"); result.json records it."""

    noise_offset: float = 0.0
    """--noise-offset: each sample's noise gets a per-channel constant of this scale."""

    weighs_prior_samples: bool = True
    """Whether `batch.weights` apply to the prior-preservation samples too (False: the instance
    samples only, as diffusers' DreamBooth scripts apply min-SNR weights)."""

    def draw(self, latents, generator, device) -> NoisedBatch:
        """The step's noise, then its timesteps, then (with --noise-offset only, so that runs
        without it draw the same numbers as before it existed) the noise's per-channel offset, all
        drawn on the CPU from `generator` (so every device draws the same numbers); the noisy
        inputs and the target."""
        import torch  # deferred: torch is heavy; families/ is imported without it

        noise = torch.randn(latents.shape, generator=generator)
        timesteps = self.sample_timesteps(latents.shape[0], generator)
        if self.noise_offset:
            noise = noise + self.noise_offset * offset_noise(latents.shape, generator)
        noise, timesteps = noise.to(device), timesteps.to(device)
        return NoisedBatch(self.noisy_inputs(latents, noise, timesteps), timesteps,
                           self.target(latents, noise, timesteps), self.loss_weights(timesteps))

    @abstractmethod
    def sample_timesteps(self, batch: int, generator):
        """(batch,) timesteps on the CPU, drawn from `generator`."""

    @abstractmethod
    def noisy_inputs(self, latents, noise, timesteps):
        """The clean `latents` noised to `timesteps`."""

    @abstractmethod
    def target(self, latents, noise, timesteps):
        """What the denoiser should output for those noisy inputs."""

    def loss_weights(self, timesteps):
        """Per-sample weights of the loss (e.g. min-SNR); None: uniform."""
        return None

    def per_sample_loss(self, prediction, batch: NoisedBatch, instances: int | None = None):
        """The mean squared error of each sample (fp32), weighted by `batch.weights` if any: all
        samples' or, when the objective does not weigh prior samples, the first `instances`."""
        import torch  # deferred: torch is heavy; families/ is imported without it
        import torch.nn.functional as F  # deferred: torch is heavy; families/ is imported without it

        errors = F.mse_loss(prediction.float(), batch.target.float(), reduction="none")
        errors = errors.mean(dim=tuple(range(1, errors.ndim)))
        if batch.weights is None:
            return errors
        if self.weighs_prior_samples or instances is None:
            return errors * batch.weights
        return torch.cat([errors[:instances] * batch.weights[:instances], errors[instances:]])


def offset_noise(shape, generator):
    """Offset noise ("diffusion with offset noise", as diffusers' training scripts add it): one
    normal draw per sample and channel, constant over the other dimensions, drawn on the CPU."""
    import torch  # deferred: torch is heavy; families/ is imported without it

    return torch.randn((*shape[:2], *[1] * (len(shape) - 2)), generator=generator)


def refuse(flag: str, value, objective: str, instead: str) -> None:
    """InvalidInputError: `flag` (set to `value`) does not apply to this `objective`."""
    raise InvalidInputError(f"{flag} {value} does not apply to this base model, which trains by "
                            f"{objective}; {instead}")


class DdpmObjective(TrainingObjective):
    """DDPM (Ho et al. 2020): timesteps uniform over the schedule's, the latents noised by its
    alphas, the target the noise (epsilon) or the velocity (v-prediction, Salimans & Ho 2022), as
    the base model's scheduler config says. diffusers' DDPMScheduler does the arithmetic."""

    # Min-SNR weights (--snr-gamma) weigh the instance samples only, as diffusers'
    # train_dreambooth_lora_sdxl.py computes them ("snr for instance loss only").
    weighs_prior_samples = False

    def __init__(self, scheduler, options: ObjectiveOptions = PLAIN):
        refuse_unread_parameters(options)
        if options.timestep_sampling != "uniform":
            refuse("--timestep-sampling", options.timestep_sampling, "DDPM (timesteps uniform)",
                   "--snr-gamma weighs DDPM's timesteps")
        if options.flow_weighting != "none":
            refuse("--flow-weighting", options.flow_weighting, "DDPM", "use --snr-gamma")
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.prediction_type
        self.snr_gamma, self.noise_offset = options.snr_gamma, options.noise_offset

    @classmethod
    def from_pipeline(cls, pipeline, options: ObjectiveOptions = PLAIN) -> DdpmObjective:
        """The objective of the schedule the pipeline's scheduler config describes (read before
        the sampler replaces it: `ModelFamily.sampling_scheduler` keeps the config)."""
        from diffusers import DDPMScheduler  # deferred: diffusers is heavy

        return cls(DDPMScheduler.from_config(pipeline.scheduler.config), options)

    def loss_weights(self, timesteps):
        """--snr-gamma: min-SNR weights (Hang et al. 2023) exactly as diffusers' DreamBooth
        scripts (train_dreambooth_lora_sdxl.py and the advanced trainer) compute them:
        min(SNR(t), gamma) / SNR(t), plus 1 for a v target (its loss "floored at an SNR weight of
        one"); SNR from diffusers' `compute_snr`. (Its train_text_to_image.py has since weighed v
        by min(SNR, gamma) / (SNR + 1) instead; the DreamBooth scripts, which users compare us
        with, kept the form here.)"""
        if not self.snr_gamma:
            return None
        import torch  # deferred: torch is heavy; families/ is imported without it
        from diffusers.training_utils import compute_snr  # deferred: diffusers is heavy

        snr = compute_snr(self.scheduler, timesteps)
        weights = torch.stack([snr, self.snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
        return weights + 1 if self.prediction_type == "v_prediction" else weights

    def sample_timesteps(self, batch: int, generator):
        import torch  # deferred: torch is heavy; families/ is imported without it

        return torch.randint(0, self.scheduler.config.num_train_timesteps, (batch,), generator=generator)

    def noisy_inputs(self, latents, noise, timesteps):
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents, noise, timesteps):
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return noise


class FlowMatchingObjective(TrainingObjective):
    """Rectified flow (Liu et al. 2022; Esser et al. 2024, SD3): the input is the straight line
    `x_t = (1 - s) * latents + s * noise` at noise level s, the target its velocity `noise - latents`.

    Timesteps are drawn as diffusers' examples/dreambooth/train_dreambooth_lora_flux2_klein.py
    and train_dreambooth_lora_flux.py (FLUX.1) draw them with their default `--weighting_scheme
    none`: u uniform in [0, 1) (`compute_density_for_timestep_sampling`), the timestep the base
    scheduler's `timesteps[int(u * num_train_timesteps)]`, s its sigma (`get_sigmas`), and every
    sample's loss weighted alike (`compute_loss_weighting_for_sd3`: ones). FLUX.2 [klein]'s and
    FLUX.1's schedulers shift their sigmas by resolution only when sampling
    (`use_dynamic_shifting`), so their training schedule is the unshifted one: s = t / 1000."""

    prediction_type = "flow"

    def __init__(self, timesteps, sigmas, options: ObjectiveOptions = PLAIN):
        refuse_unread_parameters(options)
        if options.snr_gamma:
            refuse("--snr-gamma", options.snr_gamma, "flow matching",
                   "--flow-weighting and --timestep-sampling weigh its noise levels")
        # The schedule's timesteps and their noise levels, descending, on the CPU.
        self.timesteps, self.sigmas = timesteps, sigmas
        self.options, self.noise_offset = options, options.noise_offset

    @classmethod
    def from_pipeline(cls, pipeline,
                      options: ObjectiveOptions = PLAIN) -> FlowMatchingObjective:
        """The objective of the schedule the pipeline's scheduler config describes."""
        from diffusers import FlowMatchEulerDiscreteScheduler  # deferred: diffusers is heavy

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
        return cls(scheduler.timesteps.clone(), scheduler.sigmas[:len(scheduler.timesteps)].clone(),
                   options)

    def sample_timesteps(self, batch: int, generator):
        """u in [0, 1) drawn as --timestep-sampling says (diffusers'
        `compute_density_for_timestep_sampling`: uniform, sigmoid of a normal, or SD3's mode
        sampling), the timestep `timesteps[int(u * len(timesteps))]` as diffusers' FLUX trainers
        index it (clamped: mode sampling may give u = 1)."""
        import torch  # deferred: torch is heavy; families/ is imported without it

        options = self.options
        if options.timestep_sampling == "uniform":
            u = torch.rand((batch,), generator=generator)
        else:
            from diffusers.training_utils import (  # deferred: diffusers is heavy
                compute_density_for_timestep_sampling,
            )

            u = compute_density_for_timestep_sampling(
                TIMESTEP_SAMPLING_SCHEMES[options.timestep_sampling], batch, logit_mean=options.logit_mean,
                logit_std=options.logit_std, mode_scale=options.mode_scale, generator=generator)
        indices = (u * len(self.timesteps)).long().clamp(0, len(self.timesteps) - 1)
        return self.timesteps[indices]

    def loss_weights(self, timesteps):
        """--flow-weighting: diffusers' `compute_loss_weighting_for_sd3` of each sample's sigma
        (sigma-sqrt: 1 / sigma^2; cosmap: 2 / (pi (1 - 2 sigma + 2 sigma^2))); none: uniform."""
        if self.options.flow_weighting == "none":
            return None
        from diffusers.training_utils import compute_loss_weighting_for_sd3  # deferred: diffusers is heavy

        scheme = FLOW_WEIGHTING_SCHEMES[self.options.flow_weighting]
        return compute_loss_weighting_for_sd3(scheme, self.sigma(timesteps, 1)).float()

    def sigma(self, timesteps, ndim: int):
        """Each timestep's noise level, shaped to broadcast over a batch of `ndim` dimensions."""
        schedule = self.timesteps.to(timesteps.device)
        indices = (schedule[None, :] == timesteps[:, None]).int().argmax(dim=1)
        sigma = self.sigmas.to(timesteps.device)[indices]
        return sigma.reshape(-1, *[1] * (ndim - 1))

    def noisy_inputs(self, latents, noise, timesteps):
        sigma = self.sigma(timesteps, latents.ndim).to(latents.dtype)
        return (1.0 - sigma) * latents + sigma * noise

    def target(self, latents, noise, timesteps):
        return noise - latents
