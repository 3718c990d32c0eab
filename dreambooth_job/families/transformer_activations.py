"""Saved activations of a flow-matching transformer (FLUX.1, FLUX.2): the transformer families'
`activation_levels` and bytes per unit, which training/memory_estimate.py's estimate reads.

A unit is one token times the attention width in one block: every block of these transformers
sees the image's 2x2 latent patches and the padded prompt's tokens at one width, and what it saves
for the backward pass grows with both. The bytes per unit are CPU calibrations, estimates until a
GPU confirms them: scripts/calibrate_activations.py counts, with
`torch.autograd.graph.saved_tensors_hooks`, the bytes autograd saves in one double- and one
single-stream block at the published width (bf16 autocast, fp32 weights; a bf16 base saves the
same per unit) at two sequence lengths, and divides the difference by the units added. Its output
is recorded in docs/benchmarks.md ("Flow-matching transformers: activation calibration").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransformerActivations:
    """One transformer family's calibration (scripts/calibrate_activations.py)."""

    text_tokens: int
    """The padded prompt's tokens the transformer attends over beside the image's."""
    activation_bytes_per_unit: int
    """Bytes a single-stream block saves per token x width, 16-bit compute, no checkpointing."""
    double_stream_weight: float
    """A double-stream block's bytes per unit over a single-stream block's."""
    outside_weight: float
    """What the embedders, the final norm and the output projection save, in single-block units."""
    checkpointed_bytes_per_unit: int = 2
    """With gradient checkpointing, what each block keeps: its 16-bit input, one element a unit."""

    def levels(self, config, latent_side: int) -> list[int]:
        """Per image, the units of each double- and single-stream block at a latent of
        `latent_side` (the image in 2x2 patches and the prompt's tokens, times the attention
        width), weighted so that `activation_bytes_per_unit` prices them all; then the rest of the
        transformer. The largest is what gradient checkpointing recomputes at once."""
        tokens = (latent_side // 2) ** 2 + self.text_tokens
        units = tokens * config["num_attention_heads"] * config["attention_head_dim"]
        return ([round(units * self.double_stream_weight)] * config["num_layers"]
                + [units] * config["num_single_layers"] + [round(units * self.outside_weight)])



FLUX1_DEV_ACTIVATIONS = TransformerActivations(
    text_tokens=512, activation_bytes_per_unit=50, double_stream_weight=1.13, outside_weight=0.12)
"""FLUX.1 [dev]'s calibration (CPU, width 3072, T5's 512 prompt tokens as FluxPipeline pads them):
a single-stream block saved 50.10 bytes per token x width, a double-stream one 56.43, the rest of
the transformer 5.77; with checkpointing each block kept 2.00 (single) and 2.33 (double). The FLUX.1
family (families/flux1.py) prices its `activation_levels` with it."""
