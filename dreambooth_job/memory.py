"""How much device memory training needs, and whether gradient checkpointing is worth its cost.

Recomputing activations is not free (SD 1.5 at 512 px on an H100: 337 ms a step against 174), so
`gradient_checkpointing: auto` turns it on only when the estimate below does not fit in the free
device memory. The estimate is deliberately simple: optimizer and gradient state are exact per
parameter; activations scale with the images per step, the latent area and the UNet's channel
widths, with one constant measured on SD 1.5 (docs/benchmarks.md, "GPU").
"""

from __future__ import annotations

# Bytes of saved activations per (image x latent pixel x UNet block channel) for the forward and
# backward pass without checkpointing, at 16-bit autocast (fp32 doubles it). Measured: SD 1.5 at
# 512 px on an H100 peaked 2.37 GiB higher with 2 more images per step, 88 bytes per unit.
ACTIVATION_BYTES_PER_UNIT = 100
# What the allocator's fragmentation, cuDNN workspaces and the CUDA context take beyond the estimate.
HEADROOM_FRACTION = 0.15
HEADROOM_BYTES = 2 * 2**30


def trained_parameters(modules) -> int:
    """Parameters the optimizer updates in full fine-tuning of `modules`
    (`ModelFamily.trainable_modules`: the UNet, and the text encoders when they train too)."""
    return sum(p.numel() for module in modules for p in module.parameters())


def training_state_bytes(trainable_params: int, use_8bit_adam: bool) -> int:
    """fp32 gradients plus AdamW's two moments (one byte each in 8-bit Adam)."""
    return trainable_params * (4 + (2 if use_8bit_adam else 8))


def activation_bytes(block_out_channels, images_per_step: int, latent_side: int,
                     half_precision: bool) -> int:
    units = images_per_step * latent_side * latent_side * sum(block_out_channels)
    return units * ACTIVATION_BYTES_PER_UNIT * (1 if half_precision else 2)


def needs_checkpointing(required_bytes: int, free_bytes: int) -> bool:
    return required_bytes * (1 + HEADROOM_FRACTION) + HEADROOM_BYTES > free_bytes
