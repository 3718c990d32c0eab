"""What a denoiser learns to predict: how one training step turns clean latents into noisy inputs,
timesteps and a target, and how the prediction's error is weighed. A family picks its objective
(`ModelFamily.training_objective`); the Trainer only calls `draw` and `per_sample_loss`.

    objective = family.training_objective(pipeline)        # DdpmObjective for SD and SDXL
    batch = objective.draw(latents, generator, device)      # noise, timesteps, noisy inputs, target
    prediction = family.predict(denoiser, batch.noisy, batch.timesteps, conditioning)
    errors = objective.per_sample_loss(prediction, batch)   # (batch,)

`FlowMatchingObjective` is the rectified-flow velocity objective (FLUX.2 [klein], FLUX.1): its own
timestep sampling, interpolation and target; `draw` keeps the order of the random draws.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple


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

    def draw(self, latents, generator, device) -> NoisedBatch:
        """The step's noise, then its timesteps, both drawn on the CPU from `generator` (so every
        device draws the same numbers), the noisy inputs and the target."""
        import torch  # deferred: torch is heavy; families/ is imported without it

        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = self.sample_timesteps(latents.shape[0], generator).to(device)
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

    def per_sample_loss(self, prediction, batch: NoisedBatch):
        """The mean squared error of each sample (fp32), weighted by `batch.weights` if any."""
        import torch.nn.functional as F  # deferred: torch is heavy; families/ is imported without it

        errors = F.mse_loss(prediction.float(), batch.target.float(), reduction="none")
        errors = errors.mean(dim=tuple(range(1, errors.ndim)))
        return errors if batch.weights is None else errors * batch.weights


class DdpmObjective(TrainingObjective):
    """DDPM (Ho et al. 2020): timesteps uniform over the schedule's, the latents noised by its
    alphas, the target the noise (epsilon) or the velocity (v-prediction, Salimans & Ho 2022), as
    the base model's scheduler config says. diffusers' DDPMScheduler does the arithmetic."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.prediction_type

    @classmethod
    def from_pipeline(cls, pipeline) -> DdpmObjective:
        """The objective of the schedule the pipeline's scheduler config describes (read before
        the sampler replaces it: `ModelFamily.sampling_scheduler` keeps the config)."""
        from diffusers import DDPMScheduler  # deferred: diffusers is heavy

        return cls(DDPMScheduler.from_config(pipeline.scheduler.config))

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

    def __init__(self, timesteps, sigmas):
        # The schedule's timesteps and their noise levels, descending, on the CPU.
        self.timesteps, self.sigmas = timesteps, sigmas

    @classmethod
    def from_pipeline(cls, pipeline) -> FlowMatchingObjective:
        """The objective of the schedule the pipeline's scheduler config describes."""
        from diffusers import FlowMatchEulerDiscreteScheduler  # deferred: diffusers is heavy

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
        return cls(scheduler.timesteps.clone(), scheduler.sigmas[:len(scheduler.timesteps)].clone())

    def sample_timesteps(self, batch: int, generator):
        import torch  # deferred: torch is heavy; families/ is imported without it

        u = torch.rand((batch,), generator=generator)
        return self.timesteps[(u * len(self.timesteps)).long()]

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
