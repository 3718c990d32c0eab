"""Offline building blocks for tests, the demo, bench and the toy world: Stable Diffusion's real CLIP
tokenizer (from the BPE merges open_clip_torch ships), tiny random SD-, SDXL-, FLUX.2 [klein]- and
FLUX.1-shaped pipelines (with a small in-process BPE for klein's Qwen3 encoder and a small Unigram
for FLUX.1's T5). Nothing
here downloads anything; the job itself never imports this module.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import string
import tempfile
from pathlib import Path

from dreambooth_job.exit_codes import InvalidInputError

CLIP_MAX_LENGTH = 77
# CLIP's BPE keeps the first 48,894 merges: 256 bytes x 2 (with/without </w>) + merges + 2 specials
# add up to Stable Diffusion's 49,408-token vocabulary.
CLIP_NUM_MERGES = 49408 - 512 - 2


def clip_tokenizer():
    """Stable Diffusion's CLIP tokenizer, built from the BPE merges open_clip_torch ships."""
    from transformers import CLIPTokenizer  # deferred: transformers is heavy

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError(
            "the CLIP vocabulary needs open_clip_torch (pip install --no-deps open_clip_torch)")
    bpe = Path(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(bpe, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:CLIP_NUM_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
        Path(vocab_file).write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
        Path(merges_file).write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=CLIP_MAX_LENGTH)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in the tokenizer's order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


TINY_SIZES = {
    # name: (UNet block channels, VAE block channels, text width, text layers)
    "tiny": ((32, 64), (32, 64), 32, 2),
}


def sd_pipeline(*, unet, vae, text_encoder, tokenizer, scheduler):
    """An SD 1.x-shaped pipeline of the given models, without a safety checker: the tiny test
    model's and the toy world's base (toyworld/base.py) assembly."""
    from diffusers import StableDiffusionPipeline  # deferred: diffusers is heavy

    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_tiny_pipeline(output_dir: str | os.PathLike, seed: int = 0, prediction_type: str = "epsilon"):
    """Save a tiny random SD-1.x-shaped pipeline (real tokenizer) in diffusers format; returns it.

    Its VAE downsamples 2x (two blocks), so 64 px images train on 32x32 latents.
    """
    import torch  # deferred: torch is heavy
    from diffusers import (  # deferred: diffusers is heavy
        AutoencoderKL,
        DDPMScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel  # deferred: transformers is heavy

    unet_channels, vae_channels, text_width, text_layers = TINY_SIZES["tiny"]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=unet_channels, cross_attention_dim=text_width, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels), norm_num_groups=8, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=text_width, intermediate_size=text_width * 4,
        num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type=prediction_type, clip_sample=False, steps_offset=1)
    pipeline = sd_pipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
                           scheduler=scheduler)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    return pipeline


def build_tiny_sdxl_pipeline(output_dir: str | os.PathLike, seed: int = 0,
                             prediction_type: str = "epsilon"):
    """Save a tiny random SDXL-shaped pipeline in diffusers format, built as diffusers' own SDXL
    tests build one; returns it. Two CLIP text encoders (the second with a projection) share the
    real tokenizer; the UNet takes `text_time` added conditioning: six time ids embedded at
    `addition_time_embed_dim` each plus the second encoder's projection. 64 px images train on
    32x32 latents, as with `build_tiny_pipeline`.
    """
    import torch  # deferred: torch is heavy
    from diffusers import (  # deferred: diffusers is heavy
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (  # deferred: transformers is heavy
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
    )

    unet_channels, vae_channels, text_width, text_layers = TINY_SIZES["tiny"]
    time_embed_dim, projection_dim = 8, 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=unet_channels, attention_head_dim=(2, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
        use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + projection_dim,
        cross_attention_dim=2 * text_width)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels), norm_num_groups=8, sample_size=64)
    text_config = CLIPTextConfig(
        vocab_size=49408, hidden_size=text_width, intermediate_size=text_width * 4,
        num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=projection_dim,
        hidden_act="gelu")
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    # SDXL's own scheduler settings (its scheduler_config.json).
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type=prediction_type, steps_offset=1, timestep_spacing="leading")
    tokenizer = clip_tokenizer()
    pipeline = StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler,
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    return pipeline


QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Qwen3's chat template, reduced to what Flux2KleinPipeline asks of it: user/assistant turns, the
# generation prompt, and an empty think block when `enable_thinking=False`.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}")
QWEN_CORPUS = ["a photo of sks dog", "a photo of a dog", "a dog in the snow", "a red cube on a table",
               "user assistant system", "a photo of zwx person", "a cat on a sofa"]


def qwen_tokenizer(corpus: list[str] = QWEN_CORPUS, vocab_size: int = 400):
    """A small byte-level BPE in Qwen2TokenizerFast, trained in-process on a few phrases (`corpus`),
    with Qwen's special tokens and a chat template: what Flux2KleinPipeline's prompt encoding calls."""
    from tokenizers import ByteLevelBPETokenizer  # deferred: tokenizers comes with transformers
    from transformers import Qwen2TokenizerFast  # deferred: transformers is heavy

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=QWEN_SPECIAL_TOKENS)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        vocab = json.loads(Path(tmp, "vocab.json").read_text(encoding="utf-8"))
        merges = Path(tmp, "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    # transformers 5 takes the vocabulary and merges themselves (vocab_file= is silently ignored).
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab, merges=[tuple(m.split()) for m in merges if m], unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:])
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


QWEN_LAYERS = 28
"""Qwen3 layers of the klein-shaped text encoders: the pipeline stacks hidden states 9, 18 and 27."""


def klein_vae(**config):
    """An AutoencoderKLFlux2 of `config` (random weights)."""
    from diffusers import AutoencoderKLFlux2  # deferred: diffusers is heavy

    return AutoencoderKLFlux2(**config)


def klein_text_encoder(vocab_size: int, width: int):
    """A random Qwen3 of 28 layers of `width` (2 heads, 1 key/value head), tied embeddings."""
    from transformers import Qwen3Config, Qwen3ForCausalLM  # deferred: transformers is heavy

    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
        num_hidden_layers=QWEN_LAYERS, num_attention_heads=2, num_key_value_heads=1,
        head_dim=width // 2, max_position_embeddings=1024, tie_word_embeddings=True))


def klein_transformer(*, in_channels: int, text_width: int, double_layers: int = 1,
                      single_layers: int = 1, heads: int = 2, head_dim: int = 16):
    """A random Flux2Transformer2DModel conditioned on three stacked Qwen3 layers of `text_width`."""
    from diffusers import Flux2Transformer2DModel  # deferred: diffusers is heavy

    return Flux2Transformer2DModel(
        patch_size=1, in_channels=in_channels, num_layers=double_layers,
        num_single_layers=single_layers, attention_head_dim=head_dim, num_attention_heads=heads,
        joint_attention_dim=3 * text_width, timestep_guidance_channels=256,
        axes_dims_rope=(head_dim // 4,) * 4, guidance_embeds=False)


def klein_pipeline(*, vae, text_encoder, tokenizer, transformer):
    """A Flux2KleinPipeline of the given models and klein's flow-matching Euler scheduler: the tiny
    test model's and the toy world's flow base (toyworld/flow_base.py) assembly."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline  # deferred: heavy

    # FLUX.2 [klein]'s scheduler_config.json.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer)


def build_tiny_flux2_klein_pipeline(output_dir: str | os.PathLike, seed: int = 0):
    """Save a tiny random FLUX.2 [klein]-shaped pipeline in diffusers format; returns it. A Qwen3
    text encoder (28 layers of width 16: the pipeline stacks hidden states 9, 18 and 27, so the
    transformer's joint attention width is 48), a Flux2 transformer with one double- and one
    single-stream block, and a Flux2 VAE that downsamples 2x into 4 channels, patchified 2x2 into
    the transformer's 16: a 64 px image is 16x16 tokens. The scheduler is klein's flow-matching
    Euler with dynamic shifting."""
    import torch  # deferred: torch is heavy

    tokenizer = qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = klein_transformer(in_channels=16, text_width=16)
    vae = klein_vae(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=64, patch_size=(2, 2))
    text_encoder = klein_text_encoder(len(tokenizer), 16)
    pipeline = klein_pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    return pipeline


T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
"""T5's first ids: padding 0, end of sequence 1, unknown 2."""


def t5_tokenizer():
    """A small SentencePiece-style Unigram in T5TokenizerFast, what FluxPipeline's T5 prompt
    encoding calls: T5's special tokens, then every word of a few phrases as one piece (`▁word`),
    then their letters, so any lowercase prompt tokenizes. Built from a fixed vocabulary, not
    trained (the `tokenizers` Unigram trainer's ids vary between runs), and nothing is downloaded."""
    from transformers import T5TokenizerFast  # deferred: transformers is heavy

    words = sorted({word for phrase in QWEN_CORPUS for word in phrase.split()})
    letters = sorted({c for word in words for c in word} | set(string.ascii_lowercase))
    vocab = [(token, 0.0) for token in T5_SPECIAL_TOKENS] + [("\u2581", -2.0)]
    vocab += [("\u2581" + word, -1.0) for word in words] + [(letter, -3.0) for letter in letters]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def build_tiny_flux1_pipeline(output_dir: str | os.PathLike, seed: int = 0):
    """Save a tiny random FLUX.1-shaped pipeline in diffusers format; returns it. CLIP (the real
    tokenizer; its pooled output conditions the transformer's `pooled_projections`) and T5 (a
    small Unigram tokenizer; its last hidden states are the text tokens), a Flux transformer with
    one double- and one single-stream block and the guidance embedding of FLUX.1 [dev], and an
    AutoencoderKL with FLUX.1's shift and scale factors that downsamples 2x into 4 channels,
    packed 2x2 into the transformer's 16: a 64 px image is 16x16 tokens. The scheduler is
    FLUX.1 [dev]'s flow-matching Euler with dynamic shifting."""
    import torch  # deferred: torch is heavy
    from diffusers import (  # deferred: diffusers is heavy
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import (  # deferred: transformers is heavy
        CLIPTextConfig,
        CLIPTextModel,
        T5Config,
        T5EncoderModel,
    )

    _, _, text_width, text_layers = TINY_SIZES["tiny"]
    tokenizer_2 = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=text_width,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.1159, scaling_factor=0.3611)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=text_width, intermediate_size=text_width * 4,
        num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu"))
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=24, d_kv=8, d_ff=32, num_layers=2, num_heads=3,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    # FLUX.1 [dev]'s scheduler_config.json.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipeline = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                            tokenizer=clip_tokenizer(), text_encoder_2=text_encoder_2,
                            tokenizer_2=tokenizer_2, transformer=transformer)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    return pipeline
