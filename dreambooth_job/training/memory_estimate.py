"""How much device memory training needs, and whether gradient checkpointing is worth its cost.

Recomputing activations is not free (SD 1.5 at 512 px on an H100: 337 ms a step against 174), so
`gradient_checkpointing: auto` turns it on only when the estimate below does not fit in the free
device memory. The estimate is deliberately simple: optimizer and gradient state are exact per
parameter; activations scale with the images per step, the latent area and the UNet's channel
widths, with one constant measured on SD 1.5 (docs/benchmarks.md, "GPU").
"""

from __future__ import annotations

# Bytes of saved activations per (image x latent pixel x block channel x block depth) for the
# forward and backward pass without checkpointing, at 16-bit autocast (fp32 doubles it). Measured:
# SD 1.5 at 512 px on an H100 peaked 2.37 GiB higher with 2 more images per step, 88 bytes per unit
# of the first estimate (latent area x the sum of the channels); rescaled to the per-level count
# below (`activation_units`), which SD 1.5's 14.4 M units per image at 512 px calibrate: 309.
ACTIVATION_BYTES_PER_UNIT = 309
# What the allocator's fragmentation, cuDNN workspaces and the CUDA context take beyond the estimate.
HEADROOM_FRACTION = 0.15
HEADROOM_BYTES = 2 * 2**30
GIB = 2**30


def trained_parameters(modules) -> int:
    """Parameters the optimizer updates in full fine-tuning of `modules`
    (`ModelFamily.trainable_modules`: the UNet, and the text encoders when they train too)."""
    return sum(p.numel() for module in modules for p in module.parameters())


def training_state_bytes(trainable_params: int, use_8bit_adam: bool) -> int:
    """fp32 gradients plus AdamW's two moments (one byte each in 8-bit Adam). In LoRA mode
    `trainable_params` are the adapters': the frozen base has neither gradients nor moments."""
    return trainable_params * (4 + (2 if use_8bit_adam else 8))


def checkpoint_bytes(trainable_params: int, use_8bit_adam: bool) -> int:
    """A resumable checkpoint (train_state.py): the trained weights in fp32 and AdamW's two moments
    (one byte each in 8-bit Adam); no gradients. training/sizing.py sizes preemption by it."""
    return trainable_params * (4 + (2 if use_8bit_adam else 8))


def weight_bytes(trainable_params: int, frozen_params: int, half_precision: bool) -> int:
    """The weights on the device: trained ones in fp32 (the optimizer's), frozen ones (VAE, text
    encoders that do not train, LoRA's whole base) in the compute dtype."""
    return trainable_params * 4 + frozen_params * (2 if half_precision else 4)


def activation_units(unet_config, latent_side: int) -> int:
    """Per image: each UNet level's channels x its latent area x its depth (the ResNet plus its
    transformer blocks: SD 1.5 has one per attention level, SDXL 2 and 10 at its lower levels),
    read from the UNet's config so that SD and SDXL are estimated alike."""
    channels = list(unet_config["block_out_channels"])
    layers = unet_config.get("transformer_layers_per_block") or 1
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    units = 0
    for level, (width, block_type) in enumerate(zip(channels, unet_config["down_block_types"])):
        depth = 1 + (layers[level] if "CrossAttn" in block_type else 0)
        units += width * (latent_side >> level) ** 2 * depth
    return units


def activation_bytes(unet_config, images_per_step: int, latent_side: int, half_precision: bool,
                     *, checkpointing: bool = False) -> int:
    """Saved activations of one step. With gradient checkpointing only each block's input stays
    (one element per unit) plus the largest level's activations while it is recomputed."""
    units = images_per_step * activation_units(unet_config, latent_side)
    per_unit = ACTIVATION_BYTES_PER_UNIT * (1 if half_precision else 2)
    if not checkpointing:
        return units * per_unit
    element = 2 if half_precision else 4
    largest_level = max(activation_units(_one_level(unet_config, i), latent_side >> i)
                        for i in range(len(unet_config["block_out_channels"])))
    return units * element + images_per_step * largest_level * per_unit


def _one_level(unet_config, level: int) -> dict:
    layers = unet_config.get("transformer_layers_per_block") or 1
    return {"block_out_channels": [unet_config["block_out_channels"][level]],
            "down_block_types": [unet_config["down_block_types"][level]],
            "transformer_layers_per_block": [layers if isinstance(layers, int) else layers[level]]}


def peak_bytes(*, trainable_params: int, frozen_params: int, unet_config, images_per_step: int,
               latent_side: int, half_precision: bool, checkpointing: bool,
               use_8bit_adam: bool) -> int:
    """The estimated peak of a training step: weights, gradients and optimizer state, and
    activations (the README's table: scripts/memory_table.py)."""
    return (weight_bytes(trainable_params, frozen_params, half_precision)
            + training_state_bytes(trainable_params, use_8bit_adam)
            + activation_bytes(unet_config, images_per_step, latent_side, half_precision,
                               checkpointing=checkpointing))


def needs_checkpointing(required_bytes: int, free_bytes: int) -> bool:
    return required_bytes * (1 + HEADROOM_FRACTION) + HEADROOM_BYTES > free_bytes


def training_bytes(config, unet_config, vae_scale_factor: int, trained: int, images: int,
                   half_precision: bool) -> int:
    """What one training step holds without gradient checkpointing: the trained parameters'
    state (training_state_bytes) and the UNet's activations at the run's resolution."""
    return (training_state_bytes(trained, config.use_8bit_adam)
            + activation_bytes(unet_config, images, config.resolution // vae_scale_factor,
                               half_precision))
