"""FLUX.1 (Black Forest Labs, 2024): a guidance-distilled flow-matching transformer. CLIP-L's pooled
output (`pooled_projections`) and T5-XXL's hidden states (the text tokens, 512 of them) condition
it; an AutoencoderKL of 16 latent channels, shifted and scaled by its `shift_factor` and
`scaling_factor`; the transformer takes the latents as 2x2 patches packed into tokens, with
position ids (0, row, column) for image tokens and zeros for text tokens. `FluxPipeline` loads,
samples and saves ([dev] and [schnell] alike; schnell has no guidance embedding).

Where each training choice comes from: diffusers' examples/dreambooth/train_dreambooth_lora_flux.py
(and train_dreambooth_flux.py, the same loop for full fine-tuning) and the installed
pipelines/flux/pipeline_flux.py:
- latents: `(sample - shift_factor) * scaling_factor` (the trainer; base.encode_latents), trained in
  the VAE's layout (batch, 16, h, w) as the trainer does: `predict` packs them with
  `FluxPipeline._pack_latents`, makes the image ids with `_prepare_latent_image_ids(batch, h // 2,
  w // 2)` (the pipeline's `prepare_latents`; older copies of the trainer passed h and w) and
  unpacks the output with `_unpack_latents`;
- the objective: rectified flow, timesteps and sigmas as the trainer draws them with its default
  `--weighting_scheme none` (objective.FlowMatchingObjective);
- `timestep / 1000` and the guidance `torch.tensor([args.guidance_scale]).expand(batch)` with the
  trainer's default `--guidance_scale 3.5`, only when `transformer.config.guidance_embeds` (the
  trainer: "the FLUX.1 dev variant is a guidance distilled model");
- prompts: `FluxPipeline.encode_prompt` (CLIP-L padded to 77, its `pooler_output`; T5 padded to
  `max_sequence_length=512`, the trainer's and the pipeline's default, its last hidden states;
  `text_ids` zeros of (tokens, 3));
- text-encoder training: CLIP-L only (the trainers' `--train_text_encoder` trains text_encoder_one;
  T5 stays frozen), so the LoRA files hold the transformer's and CLIP-L's adapters.

The pipeline's `latents` argument is packed tokens (batch, tokens, 64): `initial_noise` draws the
pipeline's own (batch, 16, h, w) noise and packs it. The single file (--export-single-file) and
the kohya LoRA file name the transformer's weights in BFL's layout (flux1_layout.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

from dreambooth_job.families.base import PromptEmbeddings
from dreambooth_job.families.flux1_layout import FLUX1_LAYOUT
from dreambooth_job.families.flux1_lora import Flux1LoraFormat
from dreambooth_job.families.flux_transformer import FluxTransformerFamily
from dreambooth_job.families.objective import (
    PLAIN,
    FlowMatchingObjective,
    ObjectiveOptions,
    TrainingObjective,
)
from dreambooth_job.families.reference import FLUX1_DEV
from dreambooth_job.families.transformer_activations import FLUX1_DEV_ACTIVATIONS

MAX_SEQUENCE_LENGTH = 512
"""T5 prompt tokens, padded: FluxPipeline's and the trainer's default `max_sequence_length`."""
TRAINING_GUIDANCE = 3.5
"""The distilled guidance the transformer is told while training: the trainer's `--guidance_scale`
default (also the pipeline's sampling default)."""


class Flux1(FluxTransformerFamily):
    name = "flux1"
    pipeline_classes = ("FluxPipeline",)
    text_encoder_names = ("text_encoder", "text_encoder_2")
    lora_format = Flux1LoraFormat("FluxPipeline")
    # FLUX.1 [dev]'s counts from its published configuration (reference.py).
    reference = FLUX1_DEV
    default_guidance_scale: ClassVar[float] = TRAINING_GUIDANCE
    """`--guidance-scale auto`'s value: FluxPipeline's default distilled guidance."""

    layout = FLUX1_LAYOUT
    activations = FLUX1_DEV_ACTIVATIONS
    activation_bytes_per_unit = FLUX1_DEV_ACTIVATIONS.activation_bytes_per_unit
    checkpointed_bytes_per_unit = FLUX1_DEV_ACTIVATIONS.checkpointed_bytes_per_unit

    def trained_text_encoder_names(self) -> tuple[str, ...]:
        """CLIP-L only: T5-XXL stays frozen (the module docs)."""
        return ("text_encoder",)

    # -- prompts -------------------------------------------------------------------------------
    def tokenize(self, pipeline, prompt: str) -> tuple:
        """CLIP's ids padded to its 77 tokens and T5's padded to 512, as FluxPipeline's
        `_get_clip_prompt_embeds` and `_get_t5_prompt_embeds` make them."""
        clip = pipeline.tokenizer(prompt, padding="max_length", max_length=pipeline.tokenizer_max_length,
                                  truncation=True, return_tensors="pt").input_ids
        t5 = pipeline.tokenizer_2(prompt, padding="max_length", max_length=MAX_SEQUENCE_LENGTH,
                                  truncation=True, return_tensors="pt").input_ids
        return clip, t5

    def encode_prompt(self, text_encoders: dict[str, Any], ids: tuple, device) -> PromptEmbeddings:
        """As FluxPipeline.encode_prompt: T5's last hidden states, CLIP's pooled output."""
        clip_ids, t5_ids = ids
        pooled = text_encoders["text_encoder"](clip_ids.to(device), output_hidden_states=False).pooler_output
        hidden = text_encoders["text_encoder_2"](t5_ids.to(device), output_hidden_states=False)[0]
        return PromptEmbeddings(hidden, pooled)

    def denoiser_conditioning(self, embeddings: PromptEmbeddings, dtype) -> dict[str, Any]:
        """The text tokens, the pooled projection, and the text tokens' position ids (zeros)."""
        import torch  # deferred: torch is heavy

        hidden = embeddings.hidden_states.to(dtype)
        return {"encoder_hidden_states": hidden, "pooled_projections": embeddings.pooled.to(dtype),
                "txt_ids": torch.zeros(hidden.shape[1], 3, device=hidden.device, dtype=dtype)}

    # -- latents, the denoiser, the objective ----------------------------------------------------
    def training_objective(self, pipeline,
                           options: ObjectiveOptions = PLAIN) -> TrainingObjective:
        return FlowMatchingObjective.from_pipeline(pipeline, options)

    def predict(self, denoiser, noisy, timesteps, conditioning: dict[str, Any]):
        """The transformer's velocity for `noisy` (batch, channels, h, w): packed into 2x2-patch
        tokens with their position ids, the timestep divided by 1000 and the distilled guidance
        (the module docs), the output unpacked to the latents' layout."""
        import torch  # deferred: torch is heavy
        from diffusers import FluxPipeline  # deferred: diffusers is heavy

        batch, channels, height, width = noisy.shape
        tokens = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2,
                                                           noisy.device, noisy.dtype)
        guidance = (torch.full((batch,), TRAINING_GUIDANCE, device=noisy.device)
                    if _guidance_embeds(denoiser) else None)
        output = denoiser(hidden_states=tokens, timestep=timesteps.to(tokens.dtype) / 1000,
                          guidance=guidance, img_ids=image_ids, return_dict=False, **conditioning)[0]
        # vae_scale_factor=1: height and width are already the latents'.
        return FluxPipeline._unpack_latents(output, height, width, 1)

    def initial_noise(self, pipeline, resolution: int, generator):
        """The pipeline's own draw for one image, (16, side, side) with side = 2 x (resolution //
        (VAE factor x 2)), packed as its `latents` argument takes it: (side / 2 squared, 64)."""
        import torch  # deferred: torch is heavy
        from diffusers import FluxPipeline  # deferred: diffusers is heavy

        side = 2 * (resolution // (pipeline.vae_scale_factor * 2))
        channels = self.denoiser(pipeline).config.in_channels // 4
        noise = torch.randn(1, channels, side, side, generator=generator)
        return FluxPipeline._pack_latents(noise, 1, channels, side, side)[0]


def _guidance_embeds(denoiser) -> bool:
    """Whether the transformer (possibly wrapped by accelerate's DDP) takes a guidance embedding."""
    config = getattr(denoiser, "config", None) or denoiser.module.config
    return bool(config.guidance_embeds)
