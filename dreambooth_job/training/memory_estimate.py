"""How much device memory training needs, and whether gradient checkpointing is worth its cost.

Recomputing activations is not free (SD 1.5 at 512 px on an H100: 337 ms a step against 174), so
`gradient_checkpointing: auto` turns it on only when the estimate below does not fit in the free
device memory. The estimate is deliberately simple: optimizer and gradient state are exact per
parameter; activations scale with the images per step and the units the model's family counts in
its denoiser (`ModelFamily.activation_levels`: for a UNet, the latent area and the channel widths
of each level; for a transformer, tokens times width per block), priced at the family's bytes per
unit (`ModelFamily.activation_bytes_per_unit`: measured on SD 1.5 for the UNets, docs/benchmarks.md
"GPU"; calibrated on the CPU for the transformers, scripts/calibrate_activations.py).
"""

from __future__ import annotations

from collections.abc import Sequence

# What the allocator's fragmentation, cuDNN workspaces and the CUDA context take beyond the estimate.
HEADROOM_FRACTION = 0.15
HEADROOM_BYTES = 2 * 2**30
GIB = 2**30


def trained_parameters(modules) -> int:
    """Parameters the optimizer updates in full fine-tuning of `modules`
    (`ModelFamily.trainable_modules`: the denoiser, and the text encoders when they train too)."""
    return sum(p.numel() for module in modules for p in module.parameters())


# Bytes per trained parameter of each optimizer's state (config.choices.OPTIMIZER_CHOICES), on
# the device while training and in a checkpoint. AdamW: two fp32 moments; 8-bit: one byte each;
# Prodigy: AdamW's moments plus its `s` and the initial weights `p0` it measures distance from;
# Adafactor: a matrix's second moment factored into a row and a column vector (about nothing per
# element, a vector's full), priced on the device at the one fp32 update tensor its step makes.
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw-8bit": 2, "prodigy": 16, "adafactor": 4}
CHECKPOINT_STATE_BYTES = {"adamw": 8, "adamw-8bit": 2, "prodigy": 16, "adafactor": 0}
EMA_BYTES = 4
"""--ema-decay's average: an fp32 copy of every trained parameter, on the device and in checkpoints."""


def adam(use_8bit_adam: bool) -> str:
    """The optimizer name of --use-8bit-adam's choice, for estimates that only vary it."""
    return "adamw-8bit" if use_8bit_adam else "adamw"


def training_state_bytes(trainable_params: int, optimizer: str, ema: bool = False) -> int:
    """fp32 gradients plus `optimizer`'s state (OPTIMIZER_STATE_BYTES), and the EMA's copy with
    `ema`. In LoRA mode `trainable_params` are the adapters': the frozen base has neither
    gradients nor optimizer state."""
    return trainable_params * (4 + OPTIMIZER_STATE_BYTES[optimizer] + (EMA_BYTES if ema else 0))


def checkpoint_bytes(trainable_params: int, optimizer: str, ema: bool = False) -> int:
    """A resumable checkpoint (training/state.py): the trained weights in fp32 and `optimizer`'s
    state (CHECKPOINT_STATE_BYTES), and the EMA's copy with `ema`; no gradients.
    training/sizing.py sizes preemption by it."""
    return trainable_params * (4 + CHECKPOINT_STATE_BYTES[optimizer] + (EMA_BYTES if ema else 0))


def weight_bytes(trainable_params: int, frozen_params: int, half_precision: bool) -> int:
    """The weights on the device: trained ones in fp32 (the optimizer's), frozen ones (VAE, text
    encoders that do not train, LoRA's whole base) in the compute dtype."""
    return trainable_params * 4 + frozen_params * (2 if half_precision else 4)


def activation_bytes(levels: Sequence[int], images_per_step: int, half_precision: bool, family, *,
                     checkpointing: bool = False) -> int:
    """Saved activations of one step, from the denoiser's per-image units of each level
    (`ModelFamily.activation_levels`) at the family's bytes per unit (`family`: a ModelFamily, or
    anything with its `activation_bytes_per_unit` and `checkpointed_bytes_per_unit`). With gradient
    checkpointing only each block's input stays (one element per unit) plus the largest level's
    activations while it is recomputed."""
    units = images_per_step * sum(levels)
    scale = 1 if half_precision else 2
    per_unit = family.activation_bytes_per_unit * scale
    if not checkpointing:
        return units * per_unit
    return units * family.checkpointed_bytes_per_unit * scale + images_per_step * max(levels) * per_unit


def peak_bytes(*, trainable_params: int, frozen_params: int, activation_levels: Sequence[int],
               images_per_step: int, half_precision: bool, checkpointing: bool,
               optimizer: str, family, ema: bool = False) -> int:
    """The estimated peak of a training step: weights, gradients and optimizer state, and
    activations at `family`'s bytes per unit (docs/user-guide.md's table: scripts/memory_table.py)."""
    return (weight_bytes(trainable_params, frozen_params, half_precision)
            + training_state_bytes(trainable_params, optimizer, ema)
            + activation_bytes(activation_levels, images_per_step, half_precision, family,
                               checkpointing=checkpointing))


def needs_checkpointing(required_bytes: int, free_bytes: int) -> bool:
    return required_bytes * (1 + HEADROOM_FRACTION) + HEADROOM_BYTES > free_bytes


def training_bytes(config, family, denoiser_config, vae_scale_factor: int, trained: int,
                   images: int, half_precision: bool, resolution: int | None = None) -> int:
    """What one training step holds without gradient checkpointing: the trained parameters'
    state (training_state_bytes) and the denoiser's activations at the run's resolution, as the
    run's family (a ModelFamily) counts them from the denoiser's config; `resolution` (the
    run's by default) the side of the square of the largest training image's area."""
    side = (resolution or config.resolution) // vae_scale_factor
    levels = family.activation_levels(denoiser_config, side)
    return (training_state_bytes(trained, config.resolved_optimizer, config.ema_decay > 0)
            + activation_bytes(levels, images, half_precision, family))
