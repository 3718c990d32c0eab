"""Saved activations of a diffusers UNet2DConditionModel, per level, from its config: the SD and
SDXL families' `activation_levels` (training/memory_estimate.py's estimate reads them)."""

from __future__ import annotations

# Bytes of saved activations per (image x latent pixel x block channel x block depth) for the
# forward and backward pass without checkpointing, at 16-bit autocast (fp32 doubles it). Measured:
# SD 1.5 at 512 px on an H100 peaked 2.37 GiB higher with 2 more images per step, 88 bytes per unit
# of the first estimate (latent area x the sum of the channels); rescaled to the per-level count
# below, which SD 1.5's 14.4 M units per image at 512 px calibrate: 309.
UNET_ACTIVATION_BYTES_PER_UNIT = 309


def unet_activation_levels(config, latent_side: int) -> list[int]:
    """Per image, one entry per UNet level: its channels x its latent area x its depth (the
    ResNet plus its transformer blocks: SD 1.5 has one per attention level, SDXL 2 and 10 at its
    lower levels), read from the UNet's config so that SD and SDXL are estimated alike."""
    channels = list(config["block_out_channels"])
    layers = config.get("transformer_layers_per_block") or 1
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    levels = []
    for level, (width, block_type) in enumerate(zip(channels, config["down_block_types"])):
        depth = 1 + (layers[level] if "CrossAttn" in block_type else 0)
        levels.append(width * (latent_side >> level) ** 2 * depth)
    return levels
