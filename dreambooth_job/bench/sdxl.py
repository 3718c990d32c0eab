"""Stable Diffusion XL base 1.0 for `bench --model sdxl`, from its published configuration with
random weights (no download): UNet channels 320/640/1280 with 1/2/10 transformer layers at its
attention levels, cross-attention 2048 from two text encoders (CLIP ViT-L, 12 layers of width 768,
and OpenCLIP ViT-bigG, 32 layers of width 1280 with a 1280 projection), `text_time` added
conditioning (pooled embedding + size/crop time ids), VAE as SD's with scaling factor 0.13025.

Built on any device: `torch.device("meta")` gives the shapes without memory, which memory.py's
estimate and bench's refusal read before anything real is allocated.
"""

from __future__ import annotations

from dreambooth_job.devtools.tiny_models import CLIP_MAX_LENGTH, clip_tokenizer

NATIVE_RESOLUTION = 1024
SAMPLE_SIZE = NATIVE_RESOLUTION // 8

UNET_CONFIG = {
    "sample_size": SAMPLE_SIZE, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32,
    "sample_size": NATIVE_RESOLUTION, "scaling_factor": 0.13025,
}
# (hidden, layers, heads, activation, projection): CLIP ViT-L/14 and OpenCLIP ViT-bigG/14.
TEXT_ENCODERS = {"text_encoder": (768, 12, 12, "quick_gelu", 768),
                 "text_encoder_2": (1280, 32, 20, "gelu", 1280)}


def build_models(seed: int = 0, device: str = "cpu") -> dict:
    """The UNet, VAE and both text encoders, seeded random weights on `device` ("meta": shapes
    only). The second text encoder has the projection that gives SDXL its pooled embedding."""
    import torch  # deferred: torch is heavy
    from diffusers import AutoencoderKL, UNet2DConditionModel  # deferred: diffusers is heavy
    from transformers import (  # deferred: transformers is heavy
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
    )

    torch.manual_seed(seed)
    with torch.device(device):
        built = {"unet": UNet2DConditionModel(**UNET_CONFIG), "vae": AutoencoderKL(**VAE_CONFIG)}
        for name, (width, layers, heads, act, projection) in TEXT_ENCODERS.items():
            text_config = CLIPTextConfig(
                vocab_size=49408, hidden_size=width, intermediate_size=width * 4,
                num_hidden_layers=layers, num_attention_heads=heads, hidden_act=act,
                projection_dim=projection, max_position_embeddings=CLIP_MAX_LENGTH,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
            model = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            built[name] = model(text_config)
    return built


def build_pipeline(seed: int = 0):
    """A StableDiffusionXLPipeline with seeded random weights, on the CPU."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline  # deferred: diffusers is heavy

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
        timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        **build_models(seed), tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(),
        scheduler=scheduler, force_zeros_for_empty_prompt=True)


def parameter_counts(device: str = "meta") -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters())
            for name, module in build_models(device=device).items()}
