"""The interface every model family implements, and the train-mode hook (see the package docs)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple


class ImageGeometry(NamedTuple):
    """Where a training image came from, for families conditioned on it (SDXL's time ids)."""

    original_size: tuple[int, int]
    """(width, height) of the image as uploaded (data.Photo.original_size)."""
    crop_top_left: tuple[int, int]
    """(top, left) of the square crop trained on, in the resized image (data.square_crop_at)."""
    target_size: int
    """The side of the square crop: the training resolution."""


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
    """True when `unet_conditioning` takes `geometry=` (one ImageGeometry per image of the batch)."""
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

    @abstractmethod
    def single_file_text_encoders(self, pipeline) -> dict[str, dict]:
        """The text encoders' weights in the family's original (single-file) checkpoint layout:
        {key prefix there: state dict}. export/single_file.py writes them beside the UNet and VAE,
        whose layout all families share."""

    def native_resolution(self, pipeline) -> int:
        """The resolution the UNet was trained at: its latent sample size times the VAE's factor."""
        return int(pipeline.unet.config.sample_size) * pipeline.vae_scale_factor

    # -- training ------------------------------------------------------------------------------
    def text_encoders(self, pipeline) -> dict[str, Any]:
        return {name: getattr(pipeline, name) for name in self.text_encoder_names}

    def trainable_modules(self, pipeline, train_text_encoder: bool) -> dict[str, Any]:
        """The modules fine-tuning updates, UNet first (the optimizer's parameter order)."""
        modules = {"unet": pipeline.unet}
        if train_text_encoder:
            modules.update(self.text_encoders(pipeline))
        return modules

    @abstractmethod
    def tokenize(self, pipeline, prompt: str) -> tuple:
        """Token ids of `prompt`, one (1, tokens) tensor per text encoder."""

    @abstractmethod
    def encode_prompt(self, text_encoders: dict[str, Any], ids: tuple, device) -> PromptEmbeddings:
        """Run the text encoders (as `text_encoders` returns them, possibly wrapped) on `ids`."""

    @abstractmethod
    def unet_conditioning(self, embeddings: PromptEmbeddings, dtype) -> dict[str, Any]:
        """The UNet's keyword arguments besides the noisy latents and timesteps:
        `encoder_hidden_states`, and `added_cond_kwargs` for families that take more."""


class TrainMode:
    """Which parameters fine-tuning updates and what it saves: the whole pipeline here. LoRA is
    another TrainMode (lora_mode.py); the Trainer calls nothing else of it."""

    name = "full"
    frozen_base = False
    """True when the trained modules' own weights stay frozen and only parameters the mode adds
    train (LoRA): the Trainer then keeps the base in the compute dtype, and checkpoints hold only
    the trainable parameters (train_state.py)."""

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
