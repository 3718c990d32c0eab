"""Estimated peak training memory of the published architectures (training/memory_estimate.py's model), from
models built on the meta device: no weights, no download, a few seconds of CPU.

    python scripts/memory_table.py      # the README's table

`bench --model sdxl` reads it to refuse, in one line, a run the machine cannot hold, instead of
being killed by the kernel halfway through building 3.5 B parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreambooth_job.bench import architectures as bench_models
from dreambooth_job.bench import sdxl
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.training import lora_adapters as lora
from dreambooth_job.training import memory_estimate as memory

VAE_SCALE = 8
IMAGES_PER_STEP = 2  # batch 1 with prior preservation: one subject photo and one class image


@dataclass(frozen=True)
class Estimate:
    model: str
    train_mode: str
    checkpointing: bool
    use_8bit_adam: bool
    resolution: int
    trainable_params: int
    peak_bytes: int


def meta_models(model: str) -> dict:
    """name -> module (unet, vae, text encoders) of `model` built on the meta device."""
    import torch  # deferred: torch is heavy

    if model == "sdxl":
        return sdxl.build_models(device="meta")
    with torch.device("meta"):
        pipeline = bench_models.build_pipeline(model)
    return {name: getattr(pipeline, name) for name in ("unet", "vae", "text_encoder")}


def native_resolution(model: str) -> int:
    return bench_models.NATIVE_RESOLUTION[model]


def estimate(model: str, *, train_mode: str = "full", checkpointing: bool = False,
             use_8bit_adam: bool = False, resolution: int | None = None, lora_rank: int | None = None,
             half_precision: bool = True, built: dict | None = None) -> Estimate:
    """The peak of one training step of `model` (UNet trained; text encoders and VAE frozen),
    batch 1 with prior preservation, bf16 autocast (`half_precision`)."""

    modules = built or meta_models(model)
    resolution = resolution or native_resolution(model)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    if train_mode == "lora":
        defaults = TrainConfig()  # --lora-rank and --lora-target-modules at their defaults
        trainable = lora.lora_parameter_count(modules["unet"], lora_rank or defaults.lora_rank,
                                              defaults.lora_target_modules)
        frozen = sum(counts.values())
    else:
        trainable, frozen = counts["unet"], sum(counts.values()) - counts["unet"]
    peak = memory.peak_bytes(
        trainable_params=trainable, frozen_params=frozen, unet_config=modules["unet"].config,
        images_per_step=IMAGES_PER_STEP, latent_side=resolution // VAE_SCALE,
        half_precision=half_precision, checkpointing=checkpointing, use_8bit_adam=use_8bit_adam)
    return Estimate(model, train_mode, checkpointing, use_8bit_adam, resolution, trainable, peak)
