"""FLUX.2 [klein] (Black Forest Labs, 2026): a flow-matching transformer. One Qwen3 text encoder
whose hidden states at layers 9, 18 and 27, stacked on the width, condition the transformer; a
VAE whose latents are patchified 2x2 and normalised by its batch-norm statistics; the transformer
takes them as tokens, with 4-d position ids (t, h, w, l) for image and text tokens.
`Flux2KleinPipeline` loads, samples and saves.

The denoiser's layout here (`pack_latents`, `initial_noise`) is the pipeline's `latents`
argument's: patchified (batch, 4 x channels, height / 2, width / 2); `predict` packs it into
tokens and back, so the objective and the loss see the same layout as the pipeline's sampler.
The objective is rectified flow (objective.FlowMatchingObjective), as diffusers'
train_dreambooth_lora_flux2_klein.py trains it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dreambooth_job.families.base import PromptEmbeddings
from dreambooth_job.families.flux2_layout import FLUX2_LAYOUT
from dreambooth_job.families.flux2_lora import Flux2LoraFormat
from dreambooth_job.families.flux_transformer import FluxTransformerFamily
from dreambooth_job.families.objective import (
    PLAIN,
    FlowMatchingObjective,
    ObjectiveOptions,
    TrainingObjective,
)
from dreambooth_job.families.reference import GB, ReferenceModel
from dreambooth_job.families.transformer_activations import TransformerActivations

MAX_SEQUENCE_LENGTH = 512
"""Prompt tokens, padded: Flux2KleinPipeline's default `max_sequence_length`."""
HIDDEN_STATES_LAYERS = (9, 18, 27)
"""The Qwen3 layers whose hidden states are stacked: the pipeline's `text_encoder_out_layers`
default (diffusers' klein trainer defaults to 10, 20, 30; we condition as the pipeline samples)."""
ACTIVATIONS = TransformerActivations(
    text_tokens=MAX_SEQUENCE_LENGTH, activation_bytes_per_unit=61, double_stream_weight=1.04,
    outside_weight=0.10)
"""The memory estimate's calibration (scripts/calibrate_activations.py, CPU, klein 4B's width 3072;
9B's blocks are the same at 4096): a single-stream block saved 60.93 bytes per token x width, a
double-stream one 63.22, the rest of the transformer 6.16; with checkpointing each block kept 1.96
(single) and 2.29 (double) bytes per unit (256+64 and 512+128 tokens)."""


KLEIN_4B_WIDTH = 24 * 128
"""klein 4B's transformer width (heads x head dim): a wider klein is sized as 9B (`variant`)."""


class Flux2Klein(FluxTransformerFamily):
    name = "flux2-klein"
    pipeline_classes = ("Flux2KleinPipeline",)
    text_encoder_names = ("text_encoder",)
    default_guidance_scale = 4.0  # Flux2KleinPipeline.__call__'s default
    lora_format = Flux2LoraFormat("Flux2KleinPipeline")
    # FLUX.2 [klein] base 4B, counted on the meta device from its published configuration
    # (transformer: 5 double- and 20 single-stream blocks of 24 heads x 128, MLP ratio 3, joint
    # attention 7680, as InvokeAI's and mflux's presets state it; Qwen3-4B: 36 layers of 2560,
    # 32/8 heads of 128, tied embeddings; AutoencoderKLFlux2's defaults). The default LoRA targets
    # (--lora-targets attention) reach the 5 double-stream blocks' image and text attention, 8
    # projections of 3072 x 3072 each; on Qwen3, q/k/v/o_proj of its 36 layers.
    reference = ReferenceModel(denoiser=3_875_544_576, text_encoders=4_022_468_096, vae=84_046_115,
                               lora_adapters_rank16=3_932_160 + 11_796_480, resolution=1024,
                               class_images_bytes=int(0.4 * GB), step_seconds=20)
    reference_9b: ClassVar[ReferenceModel] = ReferenceModel(
        denoiser=9_078_581_248, text_encoders=8_190_735_360, vae=84_046_115,
        lora_adapters_rank16=4_194_304 + 10_616_832, resolution=1024,
        class_images_bytes=int(0.4 * GB), step_seconds=30)
    """FLUX.2 [klein] 9B, a variant the same family loads (non-commercial licence): 8 double- and 24
    single-stream blocks of 32 heads x 128, joint attention 12288 (BFL's `Klein9BParams`); Qwen3-8B
    (36 layers of 4096, 32/8 heads, untied embeddings). Counted on the meta device
    (bench/architectures.py "flux2-klein-9b"); the memory table's second klein row and the sizing
    profiles flux2-klein-9b-full and -lora (`variants`)."""
    variants = {"9b": reference_9b}

    def variant(self, denoiser_config: dict) -> str | None:
        """9B for a transformer wider than 4B's 24 heads x 128 (9B: 32 x 128): a klein larger than
        the published 4B is sized as the largest published one, never smaller."""
        heads = denoiser_config.get("num_attention_heads")
        head_dim = denoiser_config.get("attention_head_dim")
        if not (isinstance(heads, int) and isinstance(head_dim, int)):
            return None
        return "9b" if heads * head_dim > KLEIN_4B_WIDTH else None

    layout = FLUX2_LAYOUT
    activations = ACTIVATIONS
    activation_bytes_per_unit = ACTIVATIONS.activation_bytes_per_unit
    checkpointed_bytes_per_unit = ACTIVATIONS.checkpointed_bytes_per_unit

    # -- prompts -------------------------------------------------------------------------------
    def tokenize(self, pipeline, prompt: str) -> tuple:
        """The prompt in Qwen's chat template (a user turn, thinking off), padded to 512 tokens:
        (input ids, attention mask), as Flux2KleinPipeline._get_qwen3_prompt_embeds makes them."""
        tokenizer = pipeline.tokenizer
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
        inputs = tokenizer(text, return_tensors="pt", padding="max_length", truncation=True,
                           max_length=MAX_SEQUENCE_LENGTH)
        return inputs["input_ids"], inputs["attention_mask"]

    def encode_prompt(self, text_encoders: dict[str, Any], ids: tuple, device) -> PromptEmbeddings:
        """As Flux2KleinPipeline.encode_prompt: the hidden states of layers 9, 18 and 27, stacked
        and flattened per token to (batch, tokens, 3 x width)."""
        import torch  # deferred: torch is heavy

        input_ids, attention_mask = ids
        output = text_encoders["text_encoder"](input_ids=input_ids.to(device),
                                               attention_mask=attention_mask.to(device),
                                               output_hidden_states=True, use_cache=False)
        stacked = torch.stack([output.hidden_states[k] for k in HIDDEN_STATES_LAYERS], dim=1)
        batch, layers, tokens, width = stacked.shape
        return PromptEmbeddings(stacked.permute(0, 2, 1, 3).reshape(batch, tokens, layers * width))

    def denoiser_conditioning(self, embeddings: PromptEmbeddings, dtype) -> dict[str, Any]:
        """The prompt's hidden states and the text tokens' position ids (t, h, w, l) = (0, 0, 0, token)."""
        from diffusers import Flux2KleinPipeline  # deferred: diffusers is heavy

        hidden = embeddings.hidden_states.to(dtype)
        return {"encoder_hidden_states": hidden,
                "txt_ids": Flux2KleinPipeline._prepare_text_ids(hidden).to(hidden.device)}

    # -- latents, the denoiser, the objective ----------------------------------------------------
    def training_objective(self, pipeline,
                           options: ObjectiveOptions = PLAIN) -> TrainingObjective:
        return FlowMatchingObjective.from_pipeline(pipeline, options)

    def encode_latents(self, vae, sample):
        """As the pipeline's `_encode_vae_image` and the klein trainer: patchify 2x2, then subtract
        the VAE's batch-norm running mean and divide by its running standard deviation."""
        import torch  # deferred: torch is heavy

        latents = self.pack_latents(sample)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        return (latents - mean) / std.to(latents.device, latents.dtype)

    def pack_latents(self, latents):
        """(batch, channels, height, width) to 2x2 patches: (batch, 4 x channels, height / 2, width / 2)."""
        from diffusers import Flux2KleinPipeline  # deferred: diffusers is heavy

        return Flux2KleinPipeline._patchify_latents(latents)

    def predict(self, denoiser, noisy, timesteps, conditioning: dict[str, Any]):
        """The transformer's velocity for the patchified `noisy` latents: packed into tokens with
        their position ids (t, h, w, l) = (0, row, column, 0), the timestep divided by 1000 as the
        pipeline does, and the output scattered back into the patchified layout."""
        from diffusers import Flux2KleinPipeline  # deferred: diffusers is heavy

        image_ids = Flux2KleinPipeline._prepare_latent_ids(noisy).to(noisy.device)
        tokens = Flux2KleinPipeline._pack_latents(noisy)
        output = denoiser(hidden_states=tokens, timestep=timesteps.to(tokens.dtype) / 1000,
                          guidance=None, img_ids=image_ids, return_dict=False, **conditioning)[0]
        output = output[:, :tokens.shape[1]]
        return Flux2KleinPipeline._unpack_latents_with_ids(output, image_ids, *noisy.shape[-2:])

    def initial_noise(self, pipeline, resolution: int, generator):
        """The pipeline's `latents` shape for one image: (4 x VAE channels, side / 2, side / 2)."""
        import torch  # deferred: torch is heavy

        side = 2 * (resolution // (pipeline.vae_scale_factor * 2))
        return torch.randn(self.denoiser(pipeline).config.in_channels, side // 2, side // 2,
                           generator=generator)
