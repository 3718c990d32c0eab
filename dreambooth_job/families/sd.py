"""Stable Diffusion 1.x and 2.x: one CLIP text encoder whose last hidden states condition the UNet,
nothing else; `StableDiffusionPipeline` loads, samples and saves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreambooth_job.families.base import ModelFamily, PromptEmbeddings
from dreambooth_job.outputs.export import single_file


class StableDiffusion(ModelFamily):
    name = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)
    text_encoder_names = ("text_encoder",)

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

    def tokenize(self, pipeline, prompt: str) -> tuple:
        tokenizer = pipeline.tokenizer
        return (tokenizer(prompt, padding="max_length", truncation=True,
                          max_length=tokenizer.model_max_length, return_tensors="pt").input_ids,)

    def encode_prompt(self, text_encoders: dict[str, Any], ids: tuple, device) -> PromptEmbeddings:
        return PromptEmbeddings(text_encoders["text_encoder"](ids[0].to(device))[0])

    def unet_conditioning(self, embeddings: PromptEmbeddings, dtype) -> dict[str, Any]:
        return {"encoder_hidden_states": embeddings.hidden_states.to(dtype)}
