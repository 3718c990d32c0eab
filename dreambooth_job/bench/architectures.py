"""The architectures `dreambooth-job bench` times, built from their published configurations with
random weights, so a benchmark needs no download:

- tiny: the test pipeline of `devtools.tiny_models.build_tiny_pipeline` (about 1M UNet parameters);
- tiny-sdxl: the SDXL-shaped test pipeline of `devtools.tiny_models.build_tiny_sdxl_pipeline` (two
  text encoders, `text_time` conditioning): the SDXL path of bench, runnable on any CPU;
- sd15: Stable Diffusion 1.5 (UNet channels 320/640/1280/1280, cross-attention 768, CLIP ViT-L/14
  text encoder with 12 layers of width 768, epsilon prediction);
- sd21: Stable Diffusion 2.1 (attention head dims 5/10/20/20, linear projections, cross-attention
  1024, OpenCLIP ViT-H/14 text encoder with 23 layers of width 1024, v-prediction);
- sdxl: Stable Diffusion XL base 1.0 (UNet channels 320/640/1280 with 1/2/10 transformer layers at
  its attention levels, cross-attention 2048 from two text encoders (CLIP ViT-L, 12 layers of
  width 768, and OpenCLIP ViT-bigG, 32 layers of width 1280 with a 1280 projection), `text_time`
  added conditioning, VAE as SD's with scaling factor 0.13025, 1024 px);
- flux2-klein-4b: FLUX.2 [klein] base 4B (transformer: 5 double- and 20 single-stream blocks of 24
  heads x 128, MLP ratio 3, joint attention 7680 = 3 x Qwen3-4B's 2560; Qwen3-4B text encoder, 36
  layers; AutoencoderKLFlux2 at its defaults, 32 latent channels; 1024 px). The tokenizer is the
  tiny test one (tokens' values do not change the work);
- flux2-klein-9b: FLUX.2 [klein] 9B (8 double- and 24 single-stream blocks of 32 heads x 128, joint
  attention 12288 = 3 x Qwen3-8B's 4096; Qwen3-8B text encoder, 36 layers, untied embeddings; the
  same VAE), as BFL's reference code's `Klein9BParams` states it (ostris' ai-toolkit and kohya's
  musubi-tuner copy it). Non-commercial licence;
- flux1-dev: FLUX.1 [dev] (19 double- and 38 single-stream blocks of 24 heads x 128, joint
  attention 4096, pooled 768, guidance embedding; CLIP ViT-L/14 and T5-XXL v1.1 encoder (24 layers,
  d_model 4096, gated GELU 10240, 64 heads); AutoencoderKL with 16 latent channels, shift 0.1159 and
  scale 0.3611; 1024 px). Its family is families/flux1.py; the T5 tokenizer is the tiny test one.

Built on any device: `device="meta"` gives the shapes without memory, which memory_estimate.py's estimate
(bench/estimate.py) and bench's refusal read before anything real is allocated. The model's family
(families.for_pipeline) says which of the pipeline's modules are what.

Speed does not depend on the weights' values, only on shapes and dtypes; random weights of the
right shapes time the same work as the released checkpoints.
"""

from __future__ import annotations

import tempfile

from dreambooth_job.devtools import tiny_models
from dreambooth_job.devtools.tiny_models import CLIP_MAX_LENGTH, clip_tokenizer

ARCHITECTURES = ("tiny", "tiny-sdxl", "sd15", "sd21", "sdxl", "flux2-klein-4b", "flux2-klein-9b",
                 "flux1-dev")
NATIVE_RESOLUTION = {"tiny": 64, "tiny-sdxl": 64, "sd15": 512, "sd21": 768, "sdxl": 1024,
                     "flux2-klein-4b": 1024, "flux2-klein-9b": 1024, "flux1-dev": 1024}
# Architectures whose memory bench checks before building them (memory_refusal).
LARGE = ("sdxl", "flux2-klein-4b", "flux2-klein-9b", "flux1-dev")
UNSUPPORTED: dict[str, str] = {}  # architectures bench lists but cannot run, with the reason


def build_pipeline(model: str, seed: int = 0, device: str = "cpu"):
    """A pipeline of architecture `model` with seeded random weights, on `device` (the tiny
    ones on the CPU only)."""
    if model in UNSUPPORTED:
        raise ValueError(UNSUPPORTED[model])
    if model in ("tiny", "tiny-sdxl"):
        build = tiny_models.build_tiny_pipeline if model == "tiny" else tiny_models.build_tiny_sdxl_pipeline
        with tempfile.TemporaryDirectory(prefix=f"bench-{model}-") as directory:
            return build(directory, seed=seed)
    if model == "sdxl":
        return _stable_diffusion_xl(seed, device)
    if model in FLUX2_KLEIN_TRANSFORMER_CONFIGS:
        return _flux2_klein(model, seed, device)
    if model == "flux1-dev":
        return _flux1_dev(seed, device)
    if model in ("sd15", "sd21"):
        import torch  # deferred: torch is heavy; bench's CLI starts without it

        with torch.device(device):
            return _stable_diffusion(seed, **SD_ARCHITECTURES[model])
    raise ValueError(f"unknown architecture {model!r}; choose from {', '.join(ARCHITECTURES)}")


# Stable Diffusion 1.5 and 2.1 (see the module docs).
SD_ARCHITECTURES = {
    "sd15": dict(cross_attention_dim=768, attention_head_dim=8, linear_projection=False,
                 text_layers=12, text_heads=12, text_act="quick_gelu", projection_dim=768,
                 prediction_type="epsilon", sample_size=64),
    "sd21": dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 linear_projection=True, text_layers=23, text_heads=16, text_act="gelu",
                 projection_dim=512, prediction_type="v_prediction", sample_size=96),
}


def _stable_diffusion(seed: int, *, cross_attention_dim: int, attention_head_dim,
                      linear_projection: bool, text_layers: int, text_heads: int, text_act: str,
                      projection_dim: int, prediction_type: str, sample_size: int):
    import torch  # deferred: torch is heavy
    from diffusers import (  # deferred: diffusers is heavy
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel  # deferred: transformers is heavy

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
        use_linear_projection=linear_projection, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=sample_size * 8)
    width = cross_attention_dim
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=width * 4,
        num_hidden_layers=text_layers, num_attention_heads=text_heads, hidden_act=text_act,
        projection_dim=projection_dim, max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type=prediction_type, clip_sample=False, steps_offset=1)
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


SDXL_RESOLUTION = 1024

SDXL_UNET_CONFIG = {
    "sample_size": SDXL_RESOLUTION // 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
SDXL_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32,
    "sample_size": SDXL_RESOLUTION, "scaling_factor": 0.13025,
}
# (hidden, layers, heads, activation, projection): CLIP ViT-L/14 and OpenCLIP ViT-bigG/14.
SDXL_TEXT_ENCODERS = {"text_encoder": (768, 12, 12, "quick_gelu", 768),
                      "text_encoder_2": (1280, 32, 20, "gelu", 1280)}


def build_sdxl_models(seed: int = 0, device: str = "cpu") -> dict:
    """The UNet, VAE and both text encoders, seeded random weights on `device` ("meta": shapes
    only). The second text encoder has the projection that gives SDXL its pooled embedding."""
    import torch  # deferred: heavy
    from diffusers import AutoencoderKL, UNet2DConditionModel  # deferred: heavy

    torch.manual_seed(seed)
    with torch.device(device):
        built = {"unet": UNet2DConditionModel(**SDXL_UNET_CONFIG), "vae": AutoencoderKL(**SDXL_VAE_CONFIG)}
        for name in SDXL_TEXT_ENCODERS:
            built[name] = _clip_text_encoder(name)
    return built


def _clip_text_encoder(name: str):
    """SDXL's text encoder `name` (SDXL_TEXT_ENCODERS), on the current default device; the second
    has the projection that gives SDXL its pooled embedding."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # deferred: heavy

    width, layers, heads, act, projection = SDXL_TEXT_ENCODERS[name]
    text_config = CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=width * 4,
        num_hidden_layers=layers, num_attention_heads=heads, hidden_act=act,
        projection_dim=projection, max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    model = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
    return model(text_config)


def _stable_diffusion_xl(seed: int, device: str):
    """A StableDiffusionXLPipeline with seeded random weights, on `device`."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline  # deferred: heavy

    from dreambooth_job.devtools.tiny_models import clip_tokenizer  # deferred: imports torch

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
        timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        **build_sdxl_models(seed, device), tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(),
        scheduler=scheduler, force_zeros_for_empty_prompt=True)


FLUX2_KLEIN_4B_TRANSFORMER_CONFIG = {
    "patch_size": 1, "in_channels": 128, "num_layers": 5, "num_single_layers": 20,
    "attention_head_dim": 128, "num_attention_heads": 24, "mlp_ratio": 3.0, "joint_attention_dim": 7680,
    "axes_dims_rope": (32, 32, 32, 32), "rope_theta": 2000, "timestep_guidance_channels": 256,
    "guidance_embeds": False,
}
QWEN3_4B_CONFIG = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 40960, "tie_word_embeddings": True,
}
FLUX2_KLEIN_9B_TRANSFORMER_CONFIG = {
    **FLUX2_KLEIN_4B_TRANSFORMER_CONFIG, "num_layers": 8, "num_single_layers": 24,
    "num_attention_heads": 32, "joint_attention_dim": 12288,
}
QWEN3_8B_CONFIG = {
    **QWEN3_4B_CONFIG, "hidden_size": 4096, "intermediate_size": 12288, "tie_word_embeddings": False,
}
FLUX2_KLEIN_TRANSFORMER_CONFIGS = {"flux2-klein-4b": FLUX2_KLEIN_4B_TRANSFORMER_CONFIG,
                                   "flux2-klein-9b": FLUX2_KLEIN_9B_TRANSFORMER_CONFIG}
FLUX2_KLEIN_TEXT_ENCODER_CONFIGS = {"flux2-klein-4b": QWEN3_4B_CONFIG, "flux2-klein-9b": QWEN3_8B_CONFIG}


def _flux2_klein(model: str, seed: int, device: str):
    """A Flux2KleinPipeline of klein `model`'s shapes with seeded random weights, on `device`."""
    import torch  # deferred: heavy
    from diffusers import (  # deferred: heavy
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM  # deferred: heavy

    torch.manual_seed(seed)
    with torch.device(device):
        transformer = Flux2Transformer2DModel(**FLUX2_KLEIN_TRANSFORMER_CONFIGS[model])
        vae = AutoencoderKLFlux2()
        text_encoder = Qwen3ForCausalLM(Qwen3Config(**FLUX2_KLEIN_TEXT_ENCODER_CONFIGS[model]))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tiny_models.qwen_tokenizer(), transformer=transformer)


FLUX1_DEV_TRANSFORMER_CONFIG = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}
T5_XXL_ENCODER_CONFIG = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
    "num_heads": 64, "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
}
FLUX1_VAE_CONFIG = {
    **SDXL_VAE_CONFIG, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
    "scaling_factor": 0.3611, "shift_factor": 0.1159,
}


def _flux1_dev(seed: int, device: str):
    """A FluxPipeline of FLUX.1 [dev]'s shapes with seeded random weights, on `device`."""
    import torch  # deferred: heavy
    from diffusers import (  # deferred: heavy
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel  # deferred: heavy

    torch.manual_seed(seed)
    with torch.device(device):
        transformer = FluxTransformer2DModel(**FLUX1_DEV_TRANSFORMER_CONFIG)
        vae = AutoencoderKL(**FLUX1_VAE_CONFIG)
        text_encoder = _clip_text_encoder("text_encoder")  # CLIP ViT-L/14, as SDXL's first
        text_encoder_2 = T5EncoderModel(T5Config(**T5_XXL_ENCODER_CONFIG))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=clip_tokenizer(), text_encoder_2=text_encoder_2,
                        tokenizer_2=tiny_models.t5_tokenizer(), transformer=transformer)
