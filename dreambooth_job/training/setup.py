"""The Trainer's set-up steps, in the order `Trainer.setup` runs them, each returning the state it
made (torchtune's `_setup_*` steps): the runtime (device, precision, accelerate), the models (what
trains in which dtype, memory switches), the optimizer and LR schedule, and accelerate's prepare.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.families import ModelFamily, TrainMode
from dreambooth_job.training import buckets, devices, memory_estimate, quantized_base, state

log = logging.getLogger("dreambooth_job")


@dataclass
class Runtime:
    """Where and in which precision the run computes."""

    accelerator: Any
    """accelerate's Accelerator: mixed precision, gradient accumulation, checkpoints."""
    device: torch.device
    precision: str
    """The mixed precision `auto` resolved to on the device: "no", "fp16" or "bf16"."""
    weight_dtype: torch.dtype
    """The dtype of the frozen weights (and of a frozen base under LoRA)."""


@dataclass
class TrainedModels:
    """The pipeline's models as training holds them. `denoiser` and `text_encoders` become
    accelerate's prepared (and possibly compiled) modules after `prepare`."""

    denoiser: Any
    vae: Any
    text_encoders: dict[str, Any]
    trainable: list = field(repr=False)
    """The parameters the optimizer updates, in the checkpoints' order."""
    gradient_checkpointing: bool = False
    channels_last: bool = False
    trained_text_encoders: tuple[str, ...] = ()
    """The text encoders --train-text-encoder trains (ModelFamily.trained_text_encoder_names)."""

    def set_training(self, training: bool, train_text_encoder: bool) -> None:
        """Train mode for what trains (LoRA's dropout), eval mode for sampling."""
        self.denoiser.train(training)
        for name, encoder in self.text_encoders.items():
            encoder.train(training and train_text_encoder and name in self.trained_text_encoders)


def setup_runtime(config: TrainConfig) -> Runtime:
    """The device (accelerate's), the mixed precision `auto` resolves to there, and TF32."""
    from accelerate import Accelerator  # deferred: accelerate is heavy
    from accelerate.state import AcceleratorState  # deferred: accelerate is heavy

    device = devices.pick_device()
    precision = devices.resolve_precision(config.mixed_precision, device)
    # Accelerate keeps one process-wide state and refuses a second precision in it; each
    # Trainer owns its run, so trainers set up one after another (bench rows) start afresh.
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu",
                              gradient_accumulation_steps=config.gradient_accumulation_steps)
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
        torch.backends.cudnn.allow_tf32 = config.tf32
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    return Runtime(accelerator, accelerator.device, precision, weight_dtype)


def setup_models(config: TrainConfig, pipeline, family: ModelFamily, mode: TrainMode,
                 runtime: Runtime, images_per_batch: int) -> TrainedModels:
    """Frozen weights in the compute dtype (a LoRA base quantized with --base-precision fp8/nf4),
    trained ones in fp32 master weights (what the train mode makes trainable: whole modules, or
    adapters on a frozen base), and the memory and kernel switches. `images_per_batch`
    (instance and class images) sizes the activations."""
    device, weight_dtype = runtime.device, runtime.weight_dtype
    models = TrainedModels(family.denoiser(pipeline), pipeline.vae, family.text_encoders(pipeline), [],
                           trained_text_encoders=family.trained_text_encoder_names())
    vae_dtype = devices.vae_dtype(weight_dtype, vae_override=config.vae is not None)
    models.vae.requires_grad_(False).to(device, vae_dtype)
    log.info("VAE in %s (%s)", str(vae_dtype).removeprefix("torch."),
             f"--vae {config.vae}" if config.vae else "the base model's; never fp16 without --vae")
    trained_dtype = weight_dtype if mode.frozen_base else torch.float32
    for name, encoder in models.text_encoders.items():
        encoder.requires_grad_(False)
        trains = config.train_text_encoder and name in models.trained_text_encoders
        encoder.to(device, trained_dtype if trains else weight_dtype)
    if quantized_base.is_quantized(config.base_precision):  # LoRA only (config/checks.py)
        quantized_base.quantize(models.denoiser, config.base_precision, dtype=trained_dtype,
                                device=device)
    else:
        models.denoiser.to(device, trained_dtype)
    models.trainable = mode.trainable_parameters(
        family.trainable_modules(pipeline, config.train_text_encoder))
    for param in models.trainable:
        param.data = param.data.float()  # adapters follow the base's dtype when added
    models.set_training(True, config.train_text_encoder)
    models.gradient_checkpointing = (
        config.gradient_checkpointing if config.gradient_checkpointing is not None
        else _checkpointing_needed(config, pipeline, family, models, runtime, images_per_batch))
    models.channels_last = (config.channels_last if config.channels_last is not None
                            else device.type == "cuda")
    _switch_memory_and_kernels(config, models)
    return models


def _switch_memory_and_kernels(config: TrainConfig, models: TrainedModels) -> None:
    if models.gradient_checkpointing:
        models.denoiser.enable_gradient_checkpointing()
        if config.train_text_encoder:
            for name in models.trained_text_encoders:
                models.text_encoders[name].gradient_checkpointing_enable()
    if models.channels_last:
        models.denoiser.to(memory_format=torch.channels_last)
    if config.attention_backend == "eager":
        from diffusers.models.attention_processor import AttnProcessor  # deferred: diffusers is heavy

        models.denoiser.set_attn_processor(AttnProcessor())


def step_bytes(config: TrainConfig, pipeline, family: ModelFamily, models: TrainedModels,
               images: int, half_precision: bool) -> int:
    """One training step's device memory without gradient checkpointing, as memory_estimate.py estimates it
    from the family's activation levels and the trained parameters."""
    priced = buckets.priced_resolution(config, family, pipeline, config.resolution)
    return memory_estimate.training_bytes(config, family, models.denoiser.config, pipeline.vae_scale_factor,
                                          sum(p.numel() for p in models.trainable), images, half_precision,
                                          priced)


def _checkpointing_needed(config: TrainConfig, pipeline, family: ModelFamily, models: TrainedModels,
                          runtime: Runtime, images: int) -> bool:
    """`auto`: only on CUDA, and only when training without it would not fit (training/memory_estimate.py)."""
    if runtime.device.type != "cuda":
        return False
    required = step_bytes(config, pipeline, family, models, images, runtime.precision in ("fp16", "bf16"))
    return memory_estimate.needs_checkpointing(required, torch.cuda.mem_get_info(runtime.device)[0])


def setup_optimizer(config: TrainConfig, params: list) -> tuple[Any, Any]:
    """--optimizer on `params` and the LR schedule over max_train_steps."""
    from diffusers.optimization import get_scheduler  # deferred: diffusers is heavy

    optimizer = make_optimizer(config.resolved_optimizer, params, config.resolved_learning_rate,
                               config.adam_weight_decay, config.adam_impl)
    lr_scheduler = get_scheduler(config.resolved_lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=config.max_train_steps)
    return optimizer, lr_scheduler


def make_optimizer(name: str, params: list, rate: float, weight_decay: float,
                   adam_impl: str = "auto") -> torch.optim.Optimizer:
    """The optimizer `name` (config.choices.OPTIMIZER_CHOICES) at learning rate `rate`. Every
    one keeps its whole state (Prodigy's step-size estimate d among it) in its state_dict, which
    checkpoints save and restore."""
    if name == "adamw-8bit":
        import bitsandbytes as bnb  # deferred: an optional dependency, CUDA only

        return bnb.optim.AdamW8bit(params, lr=rate, weight_decay=weight_decay)
    if name == "prodigy":
        from prodigyopt import Prodigy  # deferred: only this optimizer needs it

        # As diffusers' DreamBooth LoRA trainers set it: Adam's bias correction, and the step
        # size estimate kept from growing during a warm-up.
        return Prodigy(params, lr=rate, weight_decay=weight_decay, use_bias_correction=True,
                       safeguard_warmup=True)
    if name == "adafactor":
        from transformers.optimization import Adafactor  # deferred: transformers is heavy

        # The given rate on --lr-scheduler's schedule: not Adafactor's own relative step size,
        # nor its scaling by the parameters' RMS, which would ignore --learning-rate.
        return Adafactor(params, lr=rate, weight_decay=weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    # Fused is one kernel for all parameters on CUDA and CPU alike; on CPU, foreach falls
    # back to a loop over parameters (docs/benchmarks.md has the measurements).
    impl = "fused" if adam_impl == "auto" else adam_impl
    return torch.optim.AdamW(params, lr=rate, weight_decay=weight_decay,
                             fused=impl == "fused", foreach=impl == "foreach")


def prepare(config: TrainConfig, mode: TrainMode, accelerator, models: TrainedModels,
            optimizer, lr_scheduler) -> tuple[Any, Any]:
    """Hand the trained modules to accelerate, in the order its checkpoints record them;
    `models` then holds the prepared modules. The prepared optimizer and LR scheduler."""
    models.denoiser, optimizer, lr_scheduler = accelerator.prepare(models.denoiser, optimizer, lr_scheduler)
    if config.train_text_encoder:
        # Only the encoders that train: a frozen one (FLUX.1's T5) stays out of the checkpoints.
        models.text_encoders = {name: accelerator.prepare(encoder) if name in models.trained_text_encoders
                                else encoder for name, encoder in models.text_encoders.items()}
    if mode.frozen_base:
        state.register_trainable_only(accelerator)  # no frozen base in checkpoints
    if config.compile_unet:
        # After `prepare`: the accelerator keeps the plain module, so saved states keep its names.
        models.denoiser = torch.compile(models.denoiser, mode=config.compile_mode)
    return optimizer, lr_scheduler
