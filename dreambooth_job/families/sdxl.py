"""Stable Diffusion XL: two CLIP text encoders whose penultimate hidden states, concatenated,
condition the UNet's cross-attention, and a second conditioning path (`added_cond_kwargs`): the
pooled, projected embedding of the second encoder and six "time ids" per image, its original size,
crop offset and target size (Podell et al. 2023, sect. 2.2). `StableDiffusionXLPipeline` loads,
samples and saves.

The time ids are those of the image trained on: `denoiser_conditioning` takes each image's
`ImageGeometry` (the photo's size as uploaded and the crop the job took), which the Trainer
passes because `size_conditioned` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dreambooth_job.families.base import ImageGeometry, ModelFamily, PromptEmbeddings
from dreambooth_job.families.lora_formats import UNetLoraFormat
from dreambooth_job.families.reference import GB, ReferenceModel
from dreambooth_job.families.unet_activations import unet_activation_levels
from dreambooth_job.outputs.export import single_file


class StableDiffusionXL(ModelFamily):
    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    text_encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = ("tokenizer", "tokenizer_2")
    size_conditioned = True
    addition_embed_type = "text_time"
    lora_format = UNetLoraFormat(
        "StableDiffusionXLPipeline", ("unet", "text_encoder", "text_encoder_2"),
        original_unet_names=True, kohya_header={"ss_base_model_version": "sdxl_base_v1-0"})
    # SDXL base 1.0's counts.
    reference = ReferenceModel(denoiser=2_567_463_684, text_encoders=123_060_480 + 694_659_840,
                               vae=83_653_863, lora_adapters_rank16=23_224_320 + 1_179_648 + 5_242_880,
                               resolution=1024, class_images_bytes=int(0.4 * GB), step_seconds=20)

    def load_pipeline(self, path: str, cache_dir: str):
        import torch  # deferred: torch is heavy
        from diffusers import StableDiffusionXLPipeline  # deferred: diffusers is heavy

        # No invisible watermark: it alters every image the job samples (grids, class images).
        return StableDiffusionXLPipeline.from_pretrained(
            path, cache_dir=str(Path(cache_dir, "hub")), torch_dtype=torch.float32,
            add_watermarker=False)

    def single_file_text_encoders(self, pipeline) -> dict[str, dict]:
        """As Stability's sd_xl_base_1.0.safetensors: CLIP ViT-L in transformers' layout under
        `conditioner.embedders.0.transformer.`, OpenCLIP ViT-bigG in open_clip's (fused q/k/v,
        `text_projection`) under `conditioner.embedders.1.model.`."""
        return {single_file.SDXL_CLIP_PREFIX: single_file.clip_to_ldm(pipeline.text_encoder),
                single_file.SDXL_OPEN_CLIP_PREFIX: single_file.open_clip_to_ldm(pipeline.text_encoder_2)}

    def activation_levels(self, denoiser_config, latent_side: int) -> list[int]:
        return unet_activation_levels(denoiser_config, latent_side)

    def tokenize(self, pipeline, prompt: str) -> tuple:
        ids = []
        for name in self.tokenizer_names:
            tokenizer = getattr(pipeline, name)
            ids.append(tokenizer(prompt, padding="max_length", truncation=True,
                                 max_length=tokenizer.model_max_length, return_tensors="pt").input_ids)
        return tuple(ids)

    def encode_prompt(self, text_encoders: dict[str, Any], ids: tuple, device) -> PromptEmbeddings:
        """As StableDiffusionXLPipeline.encode_prompt: each encoder's penultimate hidden states,
        concatenated on the width; the pooled output of the second (CLIPTextModelWithProjection's
        `text_embeds`)."""
        import torch  # deferred: torch is heavy

        hidden, pooled = [], None
        for name, token_ids in zip(self.text_encoder_names, ids):
            output = text_encoders[name](token_ids.to(device), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled = output[0]
        return PromptEmbeddings(torch.cat(hidden, dim=-1), pooled)

    def denoiser_conditioning(self, embeddings: PromptEmbeddings, dtype, *,
                          geometry: Sequence[ImageGeometry]) -> dict[str, Any]:
        if len(geometry) != embeddings.hidden_states.shape[0]:
            raise ValueError(f"{len(geometry)} image geometries for a batch of "
                             f"{embeddings.hidden_states.shape[0]}")
        device = embeddings.hidden_states.device
        return {"encoder_hidden_states": embeddings.hidden_states.to(dtype),
                "added_cond_kwargs": {"text_embeds": embeddings.pooled.to(dtype),
                                      "time_ids": time_ids(geometry, dtype, device)}}


def time_ids(geometry: Sequence[ImageGeometry], dtype, device):
    """(batch, 6): original (height, width), crop (top, left), target (height, width) per image,
    in the order SDXL's `_get_add_time_ids` and diffusers' trainers use."""
    import torch  # deferred: torch is heavy

    rows = [[g.original_size[1], g.original_size[0], *g.crop_top_left, *g.target_size]
            for g in geometry]
    return torch.tensor(rows, dtype=dtype, device=device)
