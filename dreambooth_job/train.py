"""The DreamBooth training loop: full fine-tuning or LoRA adapters (--train-mode), with the
class-specific prior-preservation loss (Ruiz et al., CVPR 2023, eq. 2). Reads top to bottom:
`Trainer.setup` (precision, models, caches, optimizer, accelerate's prepare), `Trainer.train` (the
loop), `Trainer.inference_pipeline` (what is sampled and saved; outputs/weight_files.py writes the files). The
model family (prompt encoding, UNet conditioning) is `families.ModelFamily`'s, what trains is the
`families.TrainMode`'s. Every random draw of step k comes from (seed, k) (train_batches.py), so a
resumed run continues exactly like one that never stopped, cached and uncached paths alike.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch.profiler import record_function

from dreambooth_job import families, train_state
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.events import JobObserver, TrainProgress, TrainResult  # noqa: F401 - train.TrainResult
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families import ModelFamily, PromptEmbeddings, TrainMode
from dreambooth_job.families.base import ImageGeometry
from dreambooth_job.train_batches import center_crops, pick, random_crops, step_generator  # noqa: F401 - step_generator: train.X
from dreambooth_job.training import devices
from dreambooth_job.training import memory_estimate as memory
from dreambooth_job.training.subject_photos import cover_size

log = logging.getLogger("dreambooth_job")

# Named ranges of one optimizer step, for torch.profiler (`bench --profile` sums them per step):
# where a step's host time goes, e.g. how much of it is the UNet and how much is around it.
STEP_PHASES = ("inputs", "unet_forward", "backward", "clip_grad_norm", "optimizer_step")


class Trainer:
    """One fine-tuning run: `setup()` once, then `train()` (any number of times), then
    `inference_pipeline()` for sampling and the outputs.
    `family` (default: the pipeline's) encodes prompts and saves; `mode` (default: --train-mode's)
    picks what trains and is saved (families/); `set_grads_to_none=False` zeroes gradients in
    place as the reference trainer does (`bench --baseline` times it so).
    `instance_sizes`: each instance image's (width, height) as uploaded (data.Photo.original_size;
    default: the image's own size), for families conditioned on it (SDXL); class images count as
    generated at the resolution."""

    def __init__(self, config: TrainConfig, pipeline, noise_scheduler, *,
                 instance_images: list[Image.Image], instance_prompt: str,
                 class_images: list[Image.Image] | None, class_prompt: str,
                 observer: JobObserver | None = None, family: ModelFamily | None = None,
                 mode: TrainMode | None = None, set_grads_to_none: bool = True,
                 instance_sizes: list[tuple[int, int]] | None = None):
        self.pipeline = pipeline
        self.family = family or families.for_pipeline(pipeline)
        if config.resolution is None:  # auto: a job resolves it when loading (phases/load_model.py)
            config = dataclasses.replace(config, resolution=self.family.native_resolution(pipeline))
        self.config = config
        self.mode = mode or families.train_mode(config)
        self.set_grads_to_none = set_grads_to_none
        self.noise_scheduler = noise_scheduler
        self.instance_images = instance_images
        self.class_images = class_images if config.prior_preservation else None
        self.instance_prompt = instance_prompt
        res = config.resolution
        self.original_sizes = {"instance": list(instance_sizes or [im.size for im in instance_images])}
        if self.class_images:
            self.original_sizes["class"] = [(res, res)] * len(self.class_images)
        self.class_prompt = class_prompt
        self.observer = observer or JobObserver()
        self.step = 0

    # ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Everything before the first step, in order; each step reads what the previous set."""
        self._setup_precision()
        self._setup_models()
        self._setup_caches()
        self._setup_optimizer()
        self._setup_prepare()

    def _setup_precision(self) -> None:
        """The device (accelerate's), the mixed precision `auto` resolves to there, and TF32."""
        from accelerate import Accelerator  # deferred: accelerate is heavy
        from accelerate.state import AcceleratorState  # deferred: accelerate is heavy

        device = devices.pick_device()
        self.precision = devices.resolve_precision(self.config.mixed_precision, device)
        # Accelerate keeps one process-wide state and refuses a second precision in it; each
        # Trainer owns its run, so trainers set up one after another (bench rows) start afresh.
        AcceleratorState._reset_state(reset_partial_state=True)
        self.accelerator = Accelerator(
            mixed_precision=self.precision, cpu=device.type == "cpu",
            gradient_accumulation_steps=self.config.gradient_accumulation_steps)
        self.device = self.accelerator.device
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.config.tf32
            torch.backends.cudnn.allow_tf32 = self.config.tf32
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)

    def _setup_models(self) -> None:
        """Frozen weights in the compute dtype, trained ones in fp32 master weights (what the
        train mode makes trainable: whole modules, or adapters on a frozen base), and the memory
        and kernel switches."""
        config, pipe = self.config, self.pipeline
        self.unet, self.vae = pipe.unet, pipe.vae
        self.text_encoders = self.family.text_encoders(pipe)
        vae_dtype = devices.vae_dtype(self.weight_dtype, vae_override=config.vae is not None)
        self.vae.requires_grad_(False).to(self.device, vae_dtype)
        log.info("VAE in %s (%s)", str(vae_dtype).removeprefix("torch."),
                 f"--vae {config.vae}" if config.vae else "the base model's; never fp16 without --vae")
        trained_dtype = self.weight_dtype if self.mode.frozen_base else torch.float32
        for encoder in self.text_encoders.values():
            encoder.requires_grad_(False)
            encoder.to(self.device, trained_dtype if config.train_text_encoder else self.weight_dtype)
        self.unet.to(self.device, trained_dtype)
        self.trainable = self.mode.trainable_parameters(
            self.family.trainable_modules(pipe, config.train_text_encoder))
        for param in self.trainable:
            param.data = param.data.float()  # adapters follow the base's dtype when added
        self._set_training()
        self.gradient_checkpointing = (config.gradient_checkpointing if config.gradient_checkpointing
                                       is not None else self._checkpointing_needed())
        if self.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                for encoder in self.text_encoders.values():
                    encoder.gradient_checkpointing_enable()
        self.channels_last = (config.channels_last if config.channels_last is not None
                              else self.device.type == "cuda")
        if self.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if config.attention_backend == "eager":
            from diffusers.models.attention_processor import AttnProcessor  # deferred: diffusers is heavy

            self.unet.set_attn_processor(AttnProcessor())

    def _setup_caches(self) -> None:
        """Pixels, token ids, and (with --cache-latents) VAE latents and prompt embeddings."""
        config = self.config
        self.pixels = self._prepare_pixels()
        self.prompt_ids = {name: self.family.tokenize(self.pipeline, prompt) for name, prompt in
                           (("instance", self.instance_prompt), ("class", self.class_prompt))}
        # Random crops change the pixels every step, so only centre-cropped data can be cached.
        self.cached_latents = self._encode_all() if config.cache_latents and config.center_crop else None
        self.cached_embeddings = (
            {name: self._encode_prompt(ids) for name, ids in self.prompt_ids.items()}
            if config.cache_latents and not config.train_text_encoder else None)
        if self.cached_latents is not None and self.cached_embeddings is not None:
            # Neither model is needed again until sampling: give their device memory to training.
            self.vae.to("cpu")
            for encoder in self.text_encoders.values():
                encoder.to("cpu")

    def _setup_optimizer(self) -> None:
        from diffusers.optimization import get_scheduler  # deferred: diffusers is heavy

        config = self.config
        self.optimizer = self._optimizer(self.trainable)
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler, optimizer=self.optimizer,
            num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_train_steps)

    def _setup_prepare(self) -> None:
        """Hand the trained modules to accelerate, in the order its checkpoints record them."""
        config = self.config
        prepared = self.accelerator.prepare(self.unet, self.optimizer, self.lr_scheduler)
        self.unet, self.optimizer, self.lr_scheduler = prepared
        if config.train_text_encoder:
            self.text_encoders = {name: self.accelerator.prepare(encoder)
                                  for name, encoder in self.text_encoders.items()}
        if self.mode.frozen_base:
            train_state.register_trainable_only(self.accelerator)  # no frozen base in checkpoints
        if config.compile_unet:
            # After `prepare`: the accelerator keeps the plain module, so saved states keep its names.
            self.unet = torch.compile(self.unet, mode=config.compile_mode)

    def _checkpointing_needed(self) -> bool:
        """`auto`: only on CUDA, and only when training without it would not fit (memory.py)."""
        if self.device.type != "cuda":
            return False
        images = self.config.train_batch_size * (2 if self.class_images else 1)
        required = memory.training_bytes(self.config, self.unet.config, self.pipeline.vae_scale_factor,
                                         sum(p.numel() for p in self.trainable), images,
                                         self.precision in ("fp16", "bf16"))
        return memory.needs_checkpointing(required, torch.cuda.mem_get_info(self.device)[0])

    def _optimizer(self, params):
        config, rate = self.config, self.config.resolved_learning_rate
        if config.use_8bit_adam:
            import bitsandbytes as bnb  # deferred: bitsandbytes is heavy

            return bnb.optim.AdamW8bit(params, lr=rate, weight_decay=config.adam_weight_decay)
        # Fused is one kernel for all parameters on CUDA and CPU alike; on CPU, foreach falls back
        # to a loop over parameters (docs/benchmarks.md has the measurements).
        impl = "fused" if config.adam_impl == "auto" else config.adam_impl
        return torch.optim.AdamW(params, lr=rate, weight_decay=config.adam_weight_decay,
                                 fused=impl == "fused", foreach=impl == "foreach")

    def _set_training(self, training: bool = True) -> None:
        """Train mode for what trains (LoRA's dropout), eval mode for sampling."""
        self.unet.train(training)
        for encoder in self.text_encoders.values():
            encoder.train(training and self.config.train_text_encoder)

    def _prepare_pixels(self) -> dict[str, torch.Tensor | list[Image.Image]]:
        """Centre-cropped images become tensors once; random crops stay PIL images until each step."""
        res, center = self.config.resolution, self.config.center_crop
        sets = {"instance": self.instance_images}
        if self.class_images:
            sets["class"] = self.class_images
        self.images = sets
        if not center:
            return sets
        pixels, self.center_crops = {}, {}
        for name, images in sets.items():
            pixels[name], self.center_crops[name] = center_crops(images, res)
        return pixels

    def _encode_prompt(self, ids: tuple) -> PromptEmbeddings:
        return self.family.encode_prompt(self.text_encoders, ids, self.device)

    @torch.no_grad()
    def _latent_params(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE posterior's mean and log-variance, concatenated on channels."""
        return self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist.parameters.float()

    def _encode_all(self) -> dict[str, torch.Tensor]:
        """Posterior parameters of every image (and its mirror image when flipping)."""
        cache = {}
        for name, pixels in self.pixels.items():
            chunks = [self._latent_params(pixels[i:i + 8]) for i in range(0, len(pixels), 8)]
            cache[name] = torch.cat(chunks)
            if self.config.random_flip:
                chunks = [self._latent_params(pixels[i:i + 8].flip(-1)) for i in range(0, len(pixels), 8)]
                cache[name + "_flipped"] = torch.cat(chunks)
        return cache

    # ------------------------------------------------------------------------------------------
    def _pick(self, name: str, step: int, generator: torch.Generator) -> tuple[list[int], list[bool]]:
        c = self.config
        return pick(len(self.pixels[name]), name, step, c.train_batch_size, c.seed, c.random_flip,
                    generator)

    def _latents(self, name: str, step: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, list[ImageGeometry]]:
        """The batch's latents, and where each image came from (SDXL conditions on it)."""
        indices, flips = self._pick(name, step, generator)
        if self.cached_latents is not None:
            params = torch.stack([self.cached_latents[name + ("_flipped" if f else "")][i]
                                  for i, f in zip(indices, flips)])
            crops = [self.center_crops[name][i] for i in indices]
        else:
            pixels, crops = self._batch_pixels(name, indices, flips, generator)
            params = self._latent_params(pixels)
        mean, logvar = params.to(self.device).chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator).to(self.device)
        geometry = [self._geometry(name, i, crop, f) for i, crop, f in zip(indices, crops, flips)]
        return (mean + std * noise) * self.vae.config.scaling_factor, geometry

    def _geometry(self, name: str, index: int, crop: tuple[int, int], flipped: bool) -> ImageGeometry:
        res = self.config.resolution
        top, left = crop
        if flipped:
            # A mirrored crop sits as far from the right edge as the crop did from the left.
            left = cover_size(self.images[name][index].size, res)[0] - res - left
        return ImageGeometry(self.original_sizes[name][index], (top, left), res)

    def _batch_pixels(self, name, indices, flips,
                      generator) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        if self.config.center_crop:
            pixels = self.pixels[name][indices]
            crops = [self.center_crops[name][i] for i in indices]
        else:
            pixels, crops = random_crops([self.pixels[name][i] for i in indices],
                                         self.config.resolution, generator)
        return torch.stack([p.flip(-1) if f else p for p, f in zip(pixels, flips)]), crops

    def _embeddings(self, name: str) -> PromptEmbeddings:
        batch = self.config.train_batch_size
        if self.cached_embeddings is not None:
            return self.cached_embeddings[name].expand(batch)
        return self._encode_prompt(self.prompt_ids[name]).expand(batch)

    def loss(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DreamBooth's objective at `step`: instance loss + lambda x prior loss, and both parts."""
        generator = step_generator(self.config.seed, step)
        names = ["instance"] + (["class"] if self.class_images else [])
        with record_function("inputs"):
            batches = [self._latents(n, step, generator) for n in names]
            latents = torch.cat([latents for latents, _ in batches])
            geometry = [g for _, batch_geometry in batches for g in batch_geometry]
            embeddings = PromptEmbeddings.cat([self._embeddings(n) for n in names])
            noise = torch.randn(latents.shape, generator=generator).to(self.device)
            timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps,
                                      (latents.shape[0],), generator=generator).to(self.device)
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            if self.noise_scheduler.config.prediction_type == "v_prediction":
                target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
        with record_function("unet_forward"), self.accelerator.autocast(), \
                devices.attention_kernel(self.config.attention_backend):
            extra = {"geometry": geometry} if self.family.size_conditioned else {}
            conditioning = self.family.unet_conditioning(embeddings, noisy.dtype, **extra)
            prediction = self.unet(noisy, timesteps, **conditioning).sample
        errors = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        instance_loss = errors[: self.config.train_batch_size].mean()
        prior_loss = (errors[self.config.train_batch_size:].mean() if self.class_images
                      else torch.zeros((), device=self.device))
        return instance_loss + self.config.prior_loss_weight * prior_loss, instance_loss, prior_loss

    # ------------------------------------------------------------------------------------------
    def train(self, num_steps: int | None = None,
              on_step_end: Callable[[int], None] | None = None) -> TrainResult:
        """Run `num_steps` more optimizer steps (default: up to max_train_steps; more may run past
        it on the schedule's last rate, as bench's FLOP count and profile do);
        `on_step_end(step)` runs after each step."""
        config = self.config
        last_step = config.max_train_steps if num_steps is None else self.step + num_steps
        micro_steps = config.gradient_accumulation_steps
        images_per_step = config.train_batch_size * micro_steps * (2 if self.class_images else 1)
        started, started_step = time.perf_counter(), self.step
        last = None
        self._set_training()  # after sampling (inference_pipeline), and again after each hook
        while self.step < last_step:
            for micro in range(micro_steps):
                with self.accelerator.accumulate(self.unet):
                    loss, instance_loss, prior_loss = self.loss(self.step * micro_steps + micro)
                    with record_function("backward"):
                        self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and config.max_grad_norm > 0:
                        with record_function("clip_grad_norm"):
                            self.accelerator.clip_grad_norm_(self.trainable, config.max_grad_norm)
                    with record_function("optimizer_step"):
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        self.optimizer.zero_grad(set_to_none=self.set_grads_to_none)
            self.step += 1
            last = (loss.detach(), instance_loss.detach(), prior_loss.detach())
            if self.step % config.log_every == 0 or self.step == last_step:
                # The only host-device sync of the loop: once per log interval, not per step.
                loss_value = last[0].item()
                self._check_finite(loss_value)
                elapsed = time.perf_counter() - started
                rate = (self.step - started_step) / elapsed if elapsed > 0 else 0.0
                progress = TrainProgress(
                    step=self.step, max_steps=config.max_train_steps, loss=loss_value,
                    instance_loss=last[1].item(), prior_loss=last[2].item(),
                    learning_rate=self.lr_scheduler.get_last_lr()[0], steps_per_second=rate,
                    images_per_second=rate * images_per_step,
                    eta_seconds=max(config.max_train_steps - self.step, 0) / rate if rate else math.inf)
                self.observer.train_progress(progress)
            if on_step_end is not None:
                on_step_end(self.step)
                self._set_training()
        values = [v.item() for v in last] if last else [None, None, None]
        self._check_finite(values[0], weights=True)
        return TrainResult(self.step, *values, device=str(self.device), mixed_precision=self.precision,
                           gradient_checkpointing=self.gradient_checkpointing, train_mode=self.mode.name,
                           learning_rate=self.config.resolved_learning_rate,
                           trainable_parameters=sum(p.numel() for p in self.trainable))

    def _check_finite(self, loss: float | None, *, weights: bool = False) -> None:
        """A NaN or infinite loss (or, at the end, weight) means training diverged: the model is
        garbage and a retry diverges the same way, so fail as invalid input before publishing."""
        what = f"the loss is {loss}" if loss is not None and not math.isfinite(loss) else None
        # The last optimizer step came after the last loss: check the weights it left.
        if weights and not torch.stack([p.detach().isfinite().all() for p in self.trainable]).all():
            what = what or "the weights are not finite"
        if what:
            raise InvalidInputError(f"training diverged by step {self.step}: {what}; lower "
                                    f"--learning-rate (now {self.config.resolved_learning_rate:g})")

    # ------------------------------------------------------------------------------------------
    def save_state(self, directory) -> None:
        """Everything needed to continue exactly: trained weights (a LoRA run's adapters only,
        train_state.py), optimizer, LR scheduler, RNG states. The step is the caller's to record;
        per-step randomness derives from (seed, step)."""
        self.accelerator.save_state(str(directory), safe_serialization=True)

    def load_state(self, directory, step: int) -> None:
        """What save_state wrote; InvalidInputError for a state that is not this run's (forged)."""
        train_state.load_state(self.accelerator, directory, self.optimizer, self.lr_scheduler)
        self.step = step

    # ------------------------------------------------------------------------------------------
    def inference_pipeline(self):
        """The pipeline with the trained weights (LoRA: base + adapters), on the training device,
        in eval mode, ready to sample; training sets train mode again."""
        self._set_training(False)
        pipe = self.pipeline
        pipe.unet = self.accelerator.unwrap_model(self.unet, keep_torch_compile=False)
        for name, encoder in self.text_encoders.items():
            setattr(pipe, name, self.accelerator.unwrap_model(encoder))
            getattr(pipe, name).to(self.device)
        pipe.vae.to(self.device)
        return pipe
