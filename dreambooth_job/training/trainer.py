"""The DreamBooth training recipe: full fine-tuning or LoRA adapters (--train-mode), with the
class-specific prior-preservation loss (Ruiz et al., CVPR 2023, eq. 2). Reads top to bottom, in
torchtune's recipe shape: `Trainer.setup` (setup.py's steps: runtime, models, inputs, optimizer,
accelerate's prepare), `Trainer.train` (the loop, with `loss` its step), `save_state`/`load_state`
(checkpoints, state.py), `inference_pipeline` (what is sampled and saved; outputs/weight_files.py writes the
files). The model family (denoiser, objective, latents, prompts) is `families.ModelFamily`'s, what
trains is the `families.TrainMode`'s, what each step trains on is inputs.py's. Every random draw of
step k comes from (seed, k) (batches.py), so a resumed run continues exactly like one that never
stopped, cached and uncached paths alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from PIL import Image
from torch.profiler import record_function

from dreambooth_job import families
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.events import JobObserver, TrainProgress
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families import ModelFamily, PromptEmbeddings, TrainMode
from dreambooth_job.families.objective import ObjectiveOptions, TrainingObjective
from dreambooth_job.outputs.result import Training
from dreambooth_job.training import devices, ema, setup, state
from dreambooth_job.training.batches import step_generator
from dreambooth_job.training.encoding import Encoder
from dreambooth_job.training.inputs import TrainingInputs

# Named ranges of one optimizer step, for torch.profiler (`bench --profile` sums them per step):
# where a step's host time goes, e.g. how much of it is the denoiser and how much is around it.
STEP_PHASES = ("inputs", "denoiser_forward", "backward", "clip_grad_norm", "optimizer_step")


class Trainer:
    """One fine-tuning run: `setup()` once, then `train()` (any number of times), then
    `inference_pipeline()` for sampling and the outputs.
    `objective` (default: the family's, from the pipeline's scheduler config) noises the latents
    and makes the target; `family` (default: the pipeline's) encodes prompts and saves; `mode`
    (default: --train-mode's) picks what trains and is saved (families/); `set_grads_to_none=False`
    zeroes gradients in place as the reference trainer does (`bench --baseline` times it so).
    `instance_sizes`: each instance image's (width, height) as uploaded (subject_photos.Photo.original_size;
    default: the image's own size), for size-conditioned families; class images count as
    generated at the resolution. `instance_captions`: each instance image's prompt (captions.py;
    default: `instance_prompt` for all).
    After `setup`: `runtime` (setup.Runtime), `models` (setup.TrainedModels), `inputs`
    (inputs.TrainingInputs), `optimizer`, `lr_scheduler`, `average` (ema.WeightAverage with
    --ema-decay, else None: what inference_pipeline swaps in)."""

    def __init__(self, config: TrainConfig, pipeline, objective: TrainingObjective | None = None, *,
                 instance_images: list[Image.Image], instance_prompt: str,
                 class_images: list[Image.Image] | None, class_prompt: str,
                 observer: JobObserver | None = None, family: ModelFamily | None = None,
                 mode: TrainMode | None = None, set_grads_to_none: bool = True,
                 instance_sizes: list[tuple[int, int]] | None = None,
                 instance_captions: list[str] | None = None):
        self.pipeline = pipeline
        self.family = family or families.for_pipeline(pipeline)
        if config.resolution is None:  # auto is resolved once, before: base_models.training_resolution
            raise ValueError("Trainer needs --resolution resolved (base_models.training_resolution)")
        self.config = config
        self.mode = mode or families.train_mode(config, self.family, pipeline)
        self.set_grads_to_none = set_grads_to_none
        self.objective = objective or self.family.training_objective(
            pipeline, ObjectiveOptions.from_config(config))
        self.class_images = class_images if config.prior_preservation else None
        res = config.resolution
        self.images = {"instance": instance_images}
        self.original_sizes = {"instance": list(instance_sizes or [im.size for im in instance_images])}
        if self.class_images:
            self.images["class"] = self.class_images
            self.original_sizes["class"] = [(res, res)] * len(self.class_images)
        self.prompts = {"instance": instance_prompt, "class": class_prompt}
        self.instance_captions = instance_captions
        self.observer = observer or JobObserver()
        self.step = 0
        self.average: ema.WeightAverage | None = None  # setup makes it with --ema-decay

    # ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Everything before the first step, in order; each step takes what the previous made."""
        config = self.config
        self.runtime = setup.setup_runtime(config)
        self.models = setup.setup_models(config, self.pipeline, self.family, self.mode, self.runtime,
                                         config.train_batch_size * len(self.images))
        self.inputs = TrainingInputs(config, self.family, self.pipeline,
                                     Encoder(self.family, self.models, self.runtime.device),
                                     images=self.images, original_sizes=self.original_sizes,
                                     prompts=self.prompts, captions=self.instance_captions)
        optimizer, lr_scheduler = setup.setup_optimizer(config, self.models.trainable)
        self.optimizer, self.lr_scheduler = setup.prepare(
            config, self.mode, self.accelerator, self.models, optimizer, lr_scheduler)
        self.average = (ema.WeightAverage(self.models.trainable, config.ema_decay)
                        if config.ema_decay else None)

    @property
    def accelerator(self):
        return self.runtime.accelerator

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    # ------------------------------------------------------------------------------------------
    def loss(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DreamBooth's objective at `step`: instance loss + lambda x prior loss, and both parts."""
        generator = step_generator(self.config.seed, step)
        names, instances = list(self.images), self.config.train_batch_size
        with record_function("inputs"):
            batches = [self.inputs.latents(n, step, generator) for n in names]
            embeddings = [self.inputs.embeddings(n, step) for n in names]
        if len({latents.shape for latents, _ in batches}) == 1:  # one denoiser call for all sets
            errors = self._errors(torch.cat([latents for latents, _ in batches]),
                                  [g for _, batch_geometry in batches for g in batch_geometry],
                                  PromptEmbeddings.cat(embeddings), generator, instances)
        else:  # --aspect-buckets: the instance bucket is not the class images' square
            errors = torch.cat([self._errors(latents, geometry, embedded, generator,
                                             instances if name == "instance" else 0)
                                for name, (latents, geometry), embedded
                                in zip(names, batches, embeddings)])
        instance_loss = errors[: self.config.train_batch_size].mean()
        prior_loss = (errors[self.config.train_batch_size:].mean() if self.class_images
                      else torch.zeros((), device=self.device))
        return instance_loss + self.config.prior_loss_weight * prior_loss, instance_loss, prior_loss

    def _errors(self, latents, geometry, embeddings: PromptEmbeddings, generator,
                instances: int) -> torch.Tensor:
        """Each sample's loss: its noise and timestep drawn, the denoiser's prediction scored."""
        with record_function("inputs"):
            batch = self.objective.draw(latents, generator, self.device)
        with record_function("denoiser_forward"), self.accelerator.autocast(), \
                devices.attention_kernel(self.config.attention_backend):
            extra = {"geometry": geometry} if self.family.size_conditioned else {}
            conditioning = self.family.denoiser_conditioning(embeddings, batch.noisy.dtype, **extra)
            prediction = self.family.predict(self.models.denoiser, batch.noisy, batch.timesteps,
                                             conditioning)
        return self.objective.per_sample_loss(prediction, batch, instances=instances)

    # ------------------------------------------------------------------------------------------
    def train(self, num_steps: int | None = None,
              on_step_end: Callable[[int], None] | None = None) -> Training:
        """Run `num_steps` more optimizer steps (default: up to max_train_steps; more may run past
        it on the schedule's last rate, as bench's FLOP count and profile do);
        `on_step_end(step)` runs after each step."""
        config = self.config
        last_step = config.max_train_steps if num_steps is None else self.step + num_steps
        micro_steps = config.gradient_accumulation_steps
        images_per_step = config.train_batch_size * micro_steps * len(self.images)
        started, started_step = time.perf_counter(), self.step
        last = None
        self._train_on()  # again after each hook: it may have sampled (inference_pipeline)
        while self.step < last_step:
            for micro in range(micro_steps):
                with self.accelerator.accumulate(self.models.denoiser):
                    loss, instance_loss, prior_loss = self.loss(self.step * micro_steps + micro)
                    with record_function("backward"):
                        self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and config.max_grad_norm > 0:
                        with record_function("clip_grad_norm"):
                            self.accelerator.clip_grad_norm_(self.models.trainable, config.max_grad_norm)
                    with record_function("optimizer_step"):
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        self.optimizer.zero_grad(set_to_none=self.set_grads_to_none)
            self.step += 1
            if self.average is not None:
                self.average.update()
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
                self._train_on()
        values = [v.item() for v in last] if last else [None, None, None]
        self._check_finite(values[0], weights=True)
        return Training(
            max_train_steps=config.max_train_steps, steps_done=self.step, final_loss=values[0],
            final_instance_loss=values[1], final_prior_loss=values[2], device=str(self.device),
            mixed_precision=self.runtime.precision,
            gradient_checkpointing=self.models.gradient_checkpointing, train_mode=self.mode.name,
            learning_rate=config.resolved_learning_rate,
            trainable_parameters=sum(p.numel() for p in self.models.trainable),
            resolution=config.resolution)

    def _train_on(self) -> None:
        """Train mode, and the training weights back in place of the EMA's."""
        self.models.set_training(True, self.config.train_text_encoder)
        if self.average is not None:
            self.average.use_training()

    def _check_finite(self, loss: float | None, *, weights: bool = False) -> None:
        """A NaN or infinite loss (or, at the end, weight) means training diverged: the model is
        garbage and a retry diverges the same way, so fail as invalid input before publishing."""
        what = f"the loss is {loss}" if loss is not None and not math.isfinite(loss) else None
        # The last optimizer step came after the last loss: check the weights it left.
        if weights and not torch.stack([p.detach().isfinite().all() for p in self.models.trainable]).all():
            what = what or "the weights are not finite"
        if what:
            raise InvalidInputError(f"training diverged by step {self.step}: {what}; lower "
                                    f"--learning-rate (now {self.config.resolved_learning_rate:g})")

    # ------------------------------------------------------------------------------------------
    def save_state(self, directory) -> None:
        """Everything needed to continue exactly: trained weights (a LoRA run's adapters only,
        state.py), optimizer, LR scheduler, RNG states. The step is the caller's to record;
        per-step randomness derives from (seed, step). With --ema-decay, the average too (ema.py)."""
        if self.average is not None:
            self.average.use_training()  # a grid of this step may have swapped the average in
        self.accelerator.save_state(str(directory), safe_serialization=True)
        if self.average is not None:
            self.average.save(directory)

    def load_state(self, directory, step: int) -> None:
        """What save_state wrote; InvalidInputError for a state that is not this run's (forged)."""
        state.load_state(self.accelerator, directory, self.optimizer, self.lr_scheduler)
        if self.average is not None:
            self.average.load(directory, step)
        self.step = step

    # ------------------------------------------------------------------------------------------
    def inference_pipeline(self):
        """The pipeline with the trained weights (LoRA: base + adapters; with --ema-decay their
        average), on the training device, in eval mode, ready to sample and save; training sets
        train mode and the training weights again."""
        self.models.set_training(False, self.config.train_text_encoder)
        if self.average is not None:
            self.average.use_average()
        pipe = self.pipeline
        self.family.set_denoiser(pipe, self.accelerator.unwrap_model(self.models.denoiser,
                                                                     keep_torch_compile=False))
        for name, encoder in self.models.text_encoders.items():
            setattr(pipe, name, self.accelerator.unwrap_model(encoder))
            getattr(pipe, name).to(self.device)
        pipe.vae.to(self.device)
        return pipe
