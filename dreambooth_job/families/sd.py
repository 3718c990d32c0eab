"""Stable Diffusion 1.x and 2.x: one CLIP text encoder whose last hidden states condition the UNet,
nothing else; `StableDiffusionPipeline` loads, samples and saves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreambooth_job.families.base import ModelFamily, PromptEmbeddings
from dreambooth_job.families.lora_formats import UNetLoraFormat
from dreambooth_job.families.reference import GB, ReferenceModel
from dreambooth_job.families.unet_activations import unet_activation_levels
from dreambooth_job.outputs.export import single_file


class StableDiffusion(ModelFamily):
    name = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)
    text_encoder_names = ("text_encoder",)
    lora_format = UNetLoraFormat(
        "StableDiffusionPipeline", ("unet", "text_encoder"))
    # SD 1.5's counts. SD 2.x (768 px) shares the family and its profiles: its UNet is 865.9M
    # parameters, its text encoder 340.4M, within the sd profiles' safety factor.
    reference = ReferenceModel(denoiser=859_520_964, text_encoders=123_060_480, vae=83_653_863,
                               lora_adapters_rank16=3_188_736 + 1_179_648, resolution=512,
                               class_images_bytes=int(0.1 * GB), step_seconds=10)

    def load_pipeline(self, path: str, cache_dir: str):
        import torch  # deferred: torch is heavy
        from diffusers import StableDiffusionPipeline  # deferred: diffusers is heavy

        return StableDiffusionPipeline.from_pretrained(
            path, cache_dir=str(Path(cache_dir, "hub")), torch_dtype=torch.float32,
            safety_checker=None, requires_safety_checker=False)

    def single_file_text_encoders(self, pipeline) -> dict[str, dict]:
        """SD 1.x: transformers' CLIP as is, under `cond_stage_model.transformer.`; SD 2.x (an
        OpenCLIP encoder): open_clip's own layout, under `cond_stage_model.model.`."""
        encoder = pipeline.text_encoder
        if single_file.is_open_clip(encoder):
            return {single_file.OPEN_CLIP_PREFIX: single_file.open_clip_to_ldm(encoder)}
        return {single_file.CLIP_PREFIX: single_file.clip_to_ldm(encoder)}

    def class_cache_tag(self) -> str | None:
        """None: SD's class-image caches were keyed before families existed, and stay valid."""
        return None

    def activation_levels(self, denoiser_config, latent_side: int) -> list[int]:
        return unet_activation_levels(denoiser_config, latent_side)

    def tokenize(self, pipeline, prompt: str) -> tuple:
        tokenizer = pipeline.tokenizer
        return (tokenizer(prompt, padding="max_length", truncation=True,
                          max_length=tokenizer.model_max_length, return_tensors="pt").input_ids,)

    def encode_prompt(self, text_encoders: dict[str, Any], ids: tuple, device) -> PromptEmbeddings:
        return PromptEmbeddings(text_encoders["text_encoder"](ids[0].to(device))[0])

    def denoiser_conditioning(self, embeddings: PromptEmbeddings, dtype) -> dict[str, Any]:
        return {"encoder_hidden_states": embeddings.hidden_states.to(dtype)}
