"""What the FLUX transformer families (FLUX.2 [klein] in flux2.py, FLUX.1 [dev] in flux1.py) share
beyond the ModelFamily defaults: a `transformer` denoiser sampled by flow-matching Euler, pipelines
called with keywords, bf16 weights, a single file that is the transformer alone in Black Forest
Labs' layout, and an activation calibration. A subclass names its `layout` and `activations` and
keeps its own prompts, latents, objective and LoRA format.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families.base import ModelFamily
from dreambooth_job.families.bfl_layout import BflLayout, original_state
from dreambooth_job.families.transformer_activations import TransformerActivations


class FluxTransformerFamily(ModelFamily):
    denoiser_name = "transformer"
    samplers = {"flow-euler": "FlowMatchEulerDiscreteScheduler"}
    # A FLUX pod is sized by its own profile (--sizing <family>-full|lora, or auto from a model
    # submit can read): sizing every undetected SD/SDXL pod for a FLUX checkpoint would not be.
    sized_when_undetected = False
    default_save_precision: ClassVar[str] = "bf16"
    """`--save-precision auto`'s value: Black Forest Labs publishes these weights in bf16."""
    layout: ClassVar[BflLayout]
    """The transformer's original (BFL) names: the single file and the kohya LoRA file."""
    activations: ClassVar[TransformerActivations]
    """The CPU calibration of its saved activations (scripts/calibrate_activations.py; an
    estimate until a GPU confirms it)."""

    def load_pipeline(self, path: str, cache_dir: str):
        import diffusers  # deferred: diffusers is heavy
        import torch  # deferred: torch is heavy

        pipeline_class = getattr(diffusers, self.pipeline_classes[0])
        return pipeline_class.from_pretrained(path, cache_dir=str(Path(cache_dir, "hub")),
                                              torch_dtype=torch.float32)

    def generate(self, pipeline, prompts: list[str], *, latents, resolution: int,
                 num_inference_steps: int, guidance_scale: float) -> list:
        """As the SD families', with keywords (klein's first parameter is a conditioning `image`)."""
        return pipeline(prompt=prompts, height=resolution, width=resolution,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        latents=latents, output_type="pil").images

    # The single file (--export-single-file) is the transformer alone in BFL's original layout, as
    # BFL ships flux-2-klein-4b.safetensors and flux1-dev.safetensors (no key prefix): ComfyUI's
    # "Load Diffusion Model" (models/diffusion_models) reads it, with the text encoders and the VAE
    # as files of their own there; diffusers reads it with <Transformer class>.from_single_file.
    def check_single_file(self, pipeline) -> None:
        """Every transformer weight has an original name (names only: no tensor is touched)."""
        for key in self.denoiser(pipeline).state_dict(keep_vars=True):
            if self.layout.original(key.rpartition(".")[0]) is None:
                raise InvalidInputError(f"--export-single-file cannot map the transformer weight {key}: "
                                        f"not a {self.name} layout")

    def single_file_state(self, pipeline) -> dict[str, dict]:
        state = self.denoiser(pipeline).state_dict()
        return {"": original_state(self.layout, state, "--export-single-file")}

    def single_file_text_encoders(self, pipeline) -> dict[str, dict]:
        """None: ComfyUI loads these families' text encoders from files of their own."""
        return {}

    def native_resolution(self, pipeline) -> int:
        """The pipeline's default size: 128 latent pixels times the VAE's factor (1024 px)."""
        return int(pipeline.default_sample_size) * pipeline.vae_scale_factor

    def latent_granularity(self, pipeline) -> int:
        """The VAE's factor times the 2x2 patches the latents are packed into: 16 px (8 x 2)."""
        return int(pipeline.vae_scale_factor) * 2

    def activation_levels(self, denoiser_config, latent_side: int) -> list[int]:
        """One level per transformer block: its tokens (the image's 2x2 patches and the padded
        prompt's) times the attention width (transformer_activations.py)."""
        return self.activations.levels(denoiser_config, latent_side)
