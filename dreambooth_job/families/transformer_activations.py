"""Saved activations of a FLUX-style transformer (double- and single-stream blocks over image and
text tokens), per block, from its config: the FLUX families' `activation_levels`
(training/memory_estimate.py's estimate reads them)."""

from __future__ import annotations


def flux_activation_levels(config, latent_side: int, text_tokens: int) -> list[int]:
    """Per image, one level per transformer block: its tokens (the latent's 2x2 patches and the
    padded prompt's) times the attention width (heads x head dim). Not calibrated on a transformer
    yet: memory_estimate's bytes per unit is SD 1.5's."""
    tokens = (latent_side // 2) ** 2 + text_tokens
    width = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = config["num_layers"] + config["num_single_layers"]
    return [tokens * width] * blocks
