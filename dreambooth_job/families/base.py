"""The interface every model family implements, and the train-mode hook (see the package docs)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from dreambooth_job.families.lora_formats import LoraFormat
from dreambooth_job.families.objective import PLAIN, DdpmObjective, ObjectiveOptions, TrainingObjective
from dreambooth_job.families.reference import ReferenceModel
from dreambooth_job.families.unet_activations import UNET_ACTIVATION_BYTES_PER_UNIT
from dreambooth_job.outputs.export import single_file


class ImageGeometry(NamedTuple):
    """Where a training image came from, for families conditioned on it (SDXL's time ids)."""

    original_size: tuple[int, int]
    """(width, height) of the image as uploaded (subject_photos.Photo.original_size)."""
    crop_top_left: tuple[int, int]
    """(top, left) of the crop trained on, in the resized image (subject_photos.square_crop_at,
    buckets.bucket_crop_at)."""
    target_size: tuple[int, int]
    """(height, width) of the crop trained on: the training resolution's square, or with
    --aspect-buckets the photo's bucket."""


@dataclass
class PromptEmbeddings:
    """A batch of encoded prompts: what the UNet is conditioned on."""

    hidden_states: Any
    """(batch, tokens, width): the UNet's `encoder_hidden_states`."""
    pooled: Any = None
    """(batch, width) pooled text embeddings, for families whose UNet takes them (SDXL); else None."""

    def expand(self, batch: int) -> PromptEmbeddings:
        """One prompt's embeddings repeated `batch` times (a view, no copy)."""
        return PromptEmbeddings(self.hidden_states.expand(batch, -1, -1),
                                None if self.pooled is None else self.pooled.expand(batch, -1))

    @staticmethod
    def cat(parts: Sequence[PromptEmbeddings]) -> PromptEmbeddings:
        import torch  # deferred: torch is heavy

        pooled = [p.pooled for p in parts]
        return PromptEmbeddings(torch.cat([p.hidden_states for p in parts]),
                                None if pooled[0] is None else torch.cat(pooled))


class ModelFamily(ABC):
    """What differs between pipeline families. One instance per family, stateless: the models are
    the pipeline's, passed in."""

    name: ClassVar[str]
    """Short name for logs and errors, e.g. "sd"."""
    pipeline_classes: ClassVar[tuple[str, ...]]
    """`_class_name` values of model_index.json this family loads (detection reads them)."""
    text_encoder_names: ClassVar[tuple[str, ...]]
    """Pipeline attributes holding the text encoders, in the order `tokenize` returns ids."""
    size_conditioned: ClassVar[bool] = False
    """True when `denoiser_conditioning` takes `geometry=` (one ImageGeometry per image of the batch)."""
    default_guidance_scale: ClassVar[float] = 7.5
    """What --guidance-scale auto samples with (class images, grids, evaluation, `generate`):
    classifier-free guidance 7.5 for SD and SDXL (the paper's and diffusers' SD default); a
    flow family takes its pipeline's default (FLUX.2 [klein] 4.0; a guidance-distilled FLUX.1
    [dev] its embedded guidance, 3.5)."""
    default_save_precision: ClassVar[str] = "fp16"
    """What --save-precision auto writes the weight files in: fp16 for SD and SDXL, bf16 for the
    FLUX families (the dtype their checkpoints are published and sampled in)."""
    addition_embed_type: ClassVar[str | None] = None
    """The UNet's `addition_embed_type` in this family's pipelines (SDXL's `text_time`); a UNet
    with another one is a layout the single-file export does not know."""

    # -- loading, sampling, saving ------------------------------------------------------------
    @abstractmethod
    def load_pipeline(self, path: str, cache_dir: str):
        """The pipeline at `path` (a directory or hub id), on the CPU, in fp32, without a safety
        checker. OSError when it cannot be read (the caller maps it to an exit code)."""

    def generate(self, pipeline, prompts: list[str], *, latents, resolution: int,
                 num_inference_steps: int, guidance_scale: float) -> list:
        """PIL images for `prompts` from the given initial `latents` (one per prompt). diffusers'
        SD and SDXL pipelines take the same call (SDXL's original and target sizes default to
        the resolution: a full, uncropped image, which is what class images are trained as)."""
        return pipeline(prompts, height=resolution, width=resolution,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        latents=latents, output_type="pil").images

    def save_pipeline(self, pipeline, directory: str | Path) -> None:
        """A directory that `load_pipeline` (and diffusers' `from_pretrained`) loads as is."""
        pipeline.save_pretrained(directory, safe_serialization=True)

    # The single-file checkpoint (--export-single-file): outputs/export/single_file.py writes what
    # the family says, in the family's original layout. The defaults are the UNet families' (LDM's
    # UNet and VAE keys); a family with another layout overrides both, or refuses in the check.
    def check_single_file(self, pipeline) -> None:
        """Refuse (exit 2) a model this family's single-file layout cannot hold."""
        single_file.check_ldm_unet(self.denoiser(pipeline).config, self.name, self.addition_embed_type)

    def single_file_state(self, pipeline) -> dict[str, dict]:
        """The whole pipeline's weights in the single-file layout: {key prefix there: state dict}."""
        denoiser, vae = self.denoiser(pipeline), pipeline.vae
        return {single_file.UNET_PREFIX: single_file.unet_to_ldm(denoiser.state_dict(), denoiser.config),
                single_file.VAE_PREFIX: single_file.vae_to_ldm(vae.state_dict(), vae.config),
                **self.single_file_text_encoders(pipeline)}

    @abstractmethod
    def single_file_text_encoders(self, pipeline) -> dict[str, dict]:
        """The text encoders' weights in the family's original (single-file) checkpoint layout:
        {key prefix there: state dict}, for `single_file_state`."""

    def native_resolution(self, pipeline) -> int:
        """The resolution the denoiser was trained at: its latent sample size times the VAE's factor."""
        return int(self.denoiser(pipeline).config.sample_size) * pipeline.vae_scale_factor

    # -- training ------------------------------------------------------------------------------
    def latent_granularity(self, pipeline) -> int:
        """The pixel multiple a training image's width and height are with --aspect-buckets: the
        VAE's factor times the UNet's downsampling (2x per down block but the last), so that every
        skip connection's size matches: 64 px for SD 1.x/2.x (8 x 8), 32 px for SDXL (8 x 4)."""
        blocks = len(self.denoiser(pipeline).config.block_out_channels)
        return int(pipeline.vae_scale_factor) * 2 ** (blocks - 1)

    def text_encoders(self, pipeline) -> dict[str, Any]:
        return {name: getattr(pipeline, name) for name in self.text_encoder_names}

    def trained_text_encoder_names(self) -> tuple[str, ...]:
        """The text encoders --train-text-encoder trains: all of them here (FLUX.1: CLIP-L only)."""
        return self.text_encoder_names

    def trainable_modules(self, pipeline, train_text_encoder: bool) -> dict[str, Any]:
        """The modules fine-tuning updates: the denoiser first, under the key "denoiser", then the
        text encoders that train under their pipeline attributes (the optimizer's parameter order)."""
        modules = {"denoiser": self.denoiser(pipeline)}
        if train_text_encoder:
            modules.update({name: getattr(pipeline, name) for name in self.trained_text_encoder_names()})
        return modules

    @abstractmethod
    def tokenize(self, pipeline, prompt: str) -> tuple:
        """Token ids of `prompt`, one (1, tokens) tensor per text encoder."""

    @abstractmethod
    def encode_prompt(self, text_encoders: dict[str, Any], ids: tuple, device) -> PromptEmbeddings:
        """Run the text encoders (as `text_encoders` returns them, possibly wrapped) on `ids`."""

    @abstractmethod
    def denoiser_conditioning(self, embeddings: PromptEmbeddings, dtype) -> dict[str, Any]:
        """The denoiser's keyword arguments besides the noisy latents and timesteps (`predict`
        passes them): `encoder_hidden_states`, and `added_cond_kwargs` for families that take more."""

    # -- the denoiser, the objective, latents, the sampler --------------------------------------
    # What the Trainer, generation/sampling.py and generate ask instead of naming a module or a scheduler.
    # The defaults are the UNet families' (SD, SDXL); a transformer family overrides them.
    denoiser_name: ClassVar[str] = "unet"
    """The pipeline attribute holding the denoiser (a UNet here, a transformer for FLUX)."""
    samplers: ClassVar[dict[str, str]] = {
        "dpm-solver++": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
        "ddim": "DDIMScheduler", "unipc": "UniPCMultistepScheduler"}
    """diffusers scheduler classes by `generate --sampler` name; the first is the default, used for
    validation grids and class images (good images in ~25 steps)."""

    def denoiser(self, pipeline):
        return getattr(pipeline, self.denoiser_name)

    def set_denoiser(self, pipeline, module) -> None:
        setattr(pipeline, self.denoiser_name, module)

    def predict(self, denoiser, noisy, timesteps, conditioning: dict[str, Any]):
        """The denoiser's output for `noisy` at `timesteps` (`conditioning`: denoiser_conditioning's)."""
        return denoiser(noisy, timesteps, **conditioning).sample

    def training_objective(self, pipeline,
                           options: ObjectiveOptions = PLAIN) -> TrainingObjective:
        """How training noises latents and what the denoiser predicts: DDPM with the base model's
        schedule and prediction type (epsilon or v), with the run's loss and noise `options`
        (InvalidInputError for one that does not apply to the objective). Read it before
        `sampling_scheduler` replaces the pipeline's scheduler."""
        return DdpmObjective.from_pipeline(pipeline, options)

    def encode_latents(self, vae, sample):
        """A VAE posterior sample as the denoiser's input: shifted (by the VAE's `shift_factor`,
        which SD's and SDXL's VAEs do not have) and scaled, then `pack_latents`."""
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            sample = sample - shift
        return self.pack_latents(sample * vae.config.scaling_factor)

    def pack_latents(self, latents):
        """Latents (batch, channels, height, width) in the denoiser's layout: as they are for a UNet;
        a transformer family packs them into tokens."""
        return latents

    def sampler_name(self, sampler: str | None = None) -> str:
        """The diffusers scheduler class `sampler` names (default: the family's default sampler)."""
        return self.samplers[sampler or next(iter(self.samplers))]

    def sampling_scheduler(self, pipeline, sampler: str | None = None):
        """The scheduler that samples for grids, class images and `generate`, built from the
        pipeline's scheduler config (its betas and prediction type)."""
        import diffusers  # deferred: diffusers is heavy

        return getattr(diffusers, self.sampler_name(sampler)).from_config(pipeline.scheduler.config)

    def initial_noise(self, pipeline, resolution: int, generator):
        """One image's initial latents at `resolution`, drawn from `generator` on the CPU (the same
        seed gives the same image on any device), in the layout the pipeline's `latents` argument
        takes (the denoiser's for a UNet; FLUX.1's pipeline takes packed tokens)."""
        import torch  # deferred: torch is heavy; families/ is imported without it

        side = resolution // pipeline.vae_scale_factor
        return torch.randn(self.denoiser(pipeline).config.in_channels, side, side, generator=generator)

    def sampling_dtype(self, pipeline):
        """The dtype the initial latents are handed to the pipeline in: the denoiser's."""
        return self.denoiser(pipeline).dtype

    # == sizing, memory, bench, published formats (issue 24, helper A2) ========================
    reference: ClassVar[ReferenceModel]
    """Parameter counts of the family's published architecture (families/reference.py): the
    sizing profiles (training/sizing.py) are built from them before any model is loaded."""
    variants: ClassVar[dict[str, ReferenceModel]] = {}
    """Other published sizes the family loads, by a short name (klein's "9b"): each gets its
    own sizing profiles (`<name>-<variant>-<mode>`). `variant` picks one from a denoiser config."""

    def variant(self, denoiser_config: dict) -> str | None:
        """The name in `variants` of the published size whose denoiser `denoiser_config` (its
        config.json, read before the model loads) describes; None for `reference`'s."""
        return None

    sized_when_undetected: ClassVar[bool] = True
    """Whether the fallback profiles of a model that cannot be read before it loads (a hub id:
    training/sizing.py's UNDETECTED) cover this family. False keeps a much larger family (FLUX.2
    [klein]: a 95 GB full checkpoint) from sizing every undetected pod, and its grace period
    within the default operator ceiling; its runs get their profile from a model `auto` can
    read (a local directory, an s3:// prefix) or name it (--sizing <name>-<mode>)."""
    lora_format: ClassVar[LoraFormat]
    """The LoRA files the family publishes (families/lora_formats.py): which modules carry
    adapters, and the writers of diffusers' and kohya's (A1111, ComfyUI) formats."""

    def components(self, pipeline) -> dict[str, Any]:
        """The pipeline's models under family-neutral names, for counting and estimating
        (bench): "denoiser", "vae", then the text encoders under their attribute names."""
        return {"denoiser": self.denoiser(pipeline), "vae": pipeline.vae,
                **self.text_encoders(pipeline)}

    def class_cache_tag(self) -> str | None:
        """What the class-image cache key (prior_images.cache_key) holds for this family, so that one
        family's class images never serve another's run: its name."""
        return self.name

    activation_bytes_per_unit: ClassVar[int] = UNET_ACTIVATION_BYTES_PER_UNIT
    """Bytes the denoiser saves for the backward pass per unit of `activation_levels`, at 16-bit
    autocast without checkpointing (memory_estimate.py doubles it for fp32). The default is the
    UNet's, measured on SD 1.5 (unet_activations.py); a transformer family's is its own
    calibration (transformer_activations.py)."""
    checkpointed_bytes_per_unit: ClassVar[int] = 2
    """With gradient checkpointing, the bytes each level keeps per unit: its 16-bit input."""

    @abstractmethod
    def activation_levels(self, denoiser_config, latent_side: int) -> list[int]:
        """Per image, the denoiser's saved-activation units of each level at a latent of
        `latent_side` (memory_estimate.py prices them at `activation_bytes_per_unit`): the sum is a
        step's activations, the largest what gradient checkpointing recomputes at once."""


class TrainMode:
    """Which parameters fine-tuning updates and what it saves: the whole pipeline here. LoRA is
    another TrainMode (lora_mode.py); the Trainer calls nothing else of it."""

    name = "full"
    frozen_base = False
    """True when the trained modules' own weights stay frozen and only parameters the mode adds
    train (LoRA): the Trainer then keeps the base in the compute dtype, and checkpoints hold only
    the trainable parameters (training/state.py)."""

    def trainable_parameters(self, modules: dict[str, Any]) -> list:
        """Make `modules` (ModelFamily.trainable_modules) trainable; the parameters to optimize."""
        params = []
        for module in modules.values():
            module.requires_grad_(True)
            params += list(module.parameters())
        return params

    def save(self, family: ModelFamily, pipeline, directory: str | Path) -> None:
        family.save_pipeline(pipeline, directory)


FULL_FINE_TUNE = TrainMode()
