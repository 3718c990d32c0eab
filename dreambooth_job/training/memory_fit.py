"""Refuse up front, in one line, a run that cannot fit the GPU by the estimate even with every
memory saving on: a FLUX.1 [dev] full fine-tune on an 80 GB card would otherwise load 17 B
parameters, sample its class images and die of out-of-memory at its first step.

    from dreambooth_job.training import memory_fit
    memory_fit.check(config, family, pipeline, resolution, memory_fit.device_memory())

The leanest run (memory_estimate.py's model) has gradient checkpointing on, latents and prompt
embeddings cached so the VAE and the text encoders leave the GPU before the first step (unless
the text encoders train), and 8-bit Adam only if the run asked for it (the one line says when it
would fit with it). Its peak is the larger of the weights on the device while the caches are
filled and the training step's. Compared with the device's total memory, without the headroom
`gradient_checkpointing: auto` keeps: only what cannot fit is refused. On the CPU there is no
device limit and nothing is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.training import devices, lora_adapters, memory_estimate

GIB = memory_estimate.GIB


@dataclass(frozen=True)
class ModelCounts:
    """Parameters of the pipeline's parts, and of the LoRA adapters the run would add."""

    denoiser: int
    text_encoders: int
    vae: int
    denoiser_adapters: int = 0
    text_encoder_adapters: int = 0


@dataclass(frozen=True)
class RunShape:
    """What of the run's config the estimate reads."""

    lora: bool
    train_text_encoder: bool
    use_8bit_adam: bool
    images_per_step: int

    @classmethod
    def of(cls, config) -> RunShape:
        return cls(lora=config.train_mode == "lora", train_text_encoder=config.train_text_encoder,
                   use_8bit_adam=config.use_8bit_adam,
                   images_per_step=config.train_batch_size * (2 if config.prior_preservation else 1))


def leanest_peak_bytes(counts: ModelCounts, run: RunShape, levels, family) -> int:
    """The estimated peak of `run` with every memory saving on (the module docs), its activations
    per image `levels` (ModelFamily.activation_levels) at `family`'s bytes per unit; bf16."""
    encoders = counts.text_encoders if run.train_text_encoder else 0
    if run.lora:
        trained = counts.denoiser_adapters + (counts.text_encoder_adapters if run.train_text_encoder else 0)
        base = counts.denoiser + encoders  # frozen, in bf16, under the adapters
    else:
        trained, base = counts.denoiser + encoders, 0
    # The caches are filled with everything on the device; training keeps the VAE only when the
    # embeddings are not cached (the text encoders train), and then the frozen encoders with it.
    loading = memory_estimate.weight_bytes(trained, base + counts.text_encoders - encoders + counts.vae,
                                           half_precision=True)
    frozen = base + (counts.vae if run.train_text_encoder else 0)
    training = memory_estimate.peak_bytes(
        trainable_params=trained, frozen_params=frozen, activation_levels=levels,
        images_per_step=run.images_per_step, half_precision=True, checkpointing=True,
        use_8bit_adam=run.use_8bit_adam, family=family)
    return max(loading, training)


def refusal(counts: ModelCounts, run: RunShape, levels, family, device_bytes: int | None,
            what: str) -> str | None:
    """The one line refusing `run` on a device of `device_bytes` (None: the CPU, no limit), or
    None when its leanest estimate fits. `what` names the model and mode in that line."""
    if device_bytes is None:
        return None
    peak = leanest_peak_bytes(counts, run, levels, family)
    if peak <= device_bytes:
        return None
    hint = "a smaller resolution or batch"
    if not run.use_8bit_adam and leanest_peak_bytes(
            counts, RunShape(run.lora, run.train_text_encoder, True, run.images_per_step),
            levels, family) <= device_bytes:
        hint = "--use-8bit-adam"
    elif not run.lora:
        hint = "--train-mode lora"
    return (f"{what} does not fit this GPU: estimated peak {peak / GIB:.1f} GiB even with gradient "
            f"checkpointing, cached latents and embeddings and the text encoders off the GPU, against "
            f"{device_bytes / GIB:.1f} GiB of device memory (training/memory_fit.py); try {hint}")


def device_memory() -> int | None:
    """The total memory of the GPU training runs on (devices.pick_device), None on the CPU."""
    import torch  # deferred: torch is heavy

    device = devices.pick_device()
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def pipeline_counts(family, pipeline, config) -> ModelCounts:
    """The loaded pipeline's parameters, and the adapters the run's LoRA options would add."""
    parts = family.components(pipeline)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    denoiser_adapters = encoder_adapters = 0
    if config.train_mode == "lora":
        denoiser_adapters = lora_adapters.lora_parameter_count(
            parts["denoiser"], config.lora_rank, config.lora_target_modules)
        encoder_adapters = sum(lora_adapters.lora_parameter_count(
            encoder, config.lora_rank, lora_adapters.DEFAULT_TEXT_ENCODER_TARGETS)
            for encoder in family.text_encoders(pipeline).values())
    return ModelCounts(denoiser=counts.pop("denoiser"), vae=counts.pop("vae"),
                       text_encoders=sum(counts.values()), denoiser_adapters=denoiser_adapters,
                       text_encoder_adapters=encoder_adapters)


def check(config, family, pipeline, resolution: int, device_bytes: int | None) -> None:
    """InvalidInputError (exit 2) when the run cannot fit the device by the estimate; nothing on
    the CPU. Called once the base model has loaded, before class images and training."""
    if device_bytes is None:
        return
    levels = family.activation_levels(family.denoiser(pipeline).config,
                                      resolution // pipeline.vae_scale_factor)
    line = refusal(pipeline_counts(family, pipeline, config), RunShape.of(config), levels, family,
                   device_bytes, f"--train-mode {config.train_mode} of {family.name} at {resolution} px")
    if line:
        raise InvalidInputError(line)
