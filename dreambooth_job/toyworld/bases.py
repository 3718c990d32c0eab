"""The shipped toy base models and the DreamBooth settings measured on each (docs/toy-world.md).
Light on purpose: the `toy-world` and `demo` commands read the choices without importing the
experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dreambooth_job.config.choices import DEFAULT_LORA_TARGETS
from dreambooth_job.training.lora_adapters import UNET_CONV_TARGETS

TRAIN_OPTIONS = ("caption_dropout", "caption_dropout_prompt", "ema_decay", "snr_gamma", "noise_offset",
                 "timestep_sampling", "flow_weighting", "optimizer", "lr_scheduler", "lr_warmup_steps",
                 "lora_variant", "aspect_buckets")
"""TrainConfig options `toy-world` passes to every run as given (experiment.Ablation.train_options;
its flags are generated from the options' declarations, toyworld/command.py): naming one here
offers it."""
ASSET_BASE_MODEL = Path(__file__).resolve().parent.parent / "assets" / "toyworld" / "base"
ASSET_FLOW_BASE_MODEL = ASSET_BASE_MODEL.parent / "flow-base"
# The toy's learning rates per --train-mode (docs/toy-world.md): higher than the job's defaults
# (5e-6 / 1e-4, tuned for Stable Diffusion), since the toy learns in 500 steps at batch 1.
LEARNING_RATES = {"full": 4e-4, "lora": 2e-3}
# LoRA targets: the toy UNet has attention only at 8x8, and attention-only adapters learned only
# half the subject (a magenta ball), so the ResNet convolutions are adapted too (docs/toy-world.md).
LORA_TARGETS = (*DEFAULT_LORA_TARGETS, *UNET_CONV_TARGETS)
# The flow-matching base's transformer: the double-stream block's image attention (the job's
# default targets) and image MLP, and the single-stream block's fused attention + MLP input.
FLOW_LORA_TARGETS = (*DEFAULT_LORA_TARGETS, "ff.linear_in", "ff.linear_out", "to_qkv_mlp_proj")


@dataclass(frozen=True)
class ToyBase:
    """One of the shipped toy base models and the DreamBooth settings measured on it."""

    path: Path
    learning_rates: dict[str, float]
    """Per --train-mode."""
    lora_targets: tuple[str, ...]


TOY_BASES = {
    "ddpm": ToyBase(ASSET_BASE_MODEL, LEARNING_RATES, LORA_TARGETS),
    "flow": ToyBase(ASSET_FLOW_BASE_MODEL, {"full": 4e-4, "lora": 2e-3}, FLOW_LORA_TARGETS),
}
"""ddpm: the Stable Diffusion-shaped base (UNet, DDPM; toyworld/base.py); flow: the FLUX.2
[klein]-shaped one (transformer, rectified flow; toyworld/flow_base.py)."""
DEFAULT_TOY_BASE = "ddpm"
