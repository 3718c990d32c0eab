"""Estimated peak training memory of the published architectures (training/memory_estimate.py's model), from
models built on the meta device: no weights, no download, a few seconds of CPU.

    python scripts/memory_table.py      # docs/user-guide.md's table

`bench --model sdxl` reads it to refuse, in one line, a run the machine cannot hold, instead of
being killed by the kernel halfway through building 3.5 B parameters. The model's family
(families.for_pipeline) says which module is the denoiser and how its activations count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from dreambooth_job import families
from dreambooth_job.bench import architectures
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.families import ModelFamily
from dreambooth_job.training import lora_adapters, memory_estimate

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


class MetaModel(NamedTuple):
    family: ModelFamily
    modules: dict[str, Any]
    """ModelFamily.components: "denoiser", "vae", then the text encoders."""


def meta_models(model: str) -> MetaModel:
    """Architecture `model` built on the meta device, with its family."""
    pipeline = architectures.build_pipeline(model, device="meta")
    family = families.for_pipeline(pipeline)
    return MetaModel(family, family.components(pipeline))


def parameter_counts(pipeline) -> dict[str, int]:
    """The pipeline's parameters: the denoiser's, the text encoders' together, the VAE's."""
    modules = families.for_pipeline(pipeline).components(pipeline)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    return {"denoiser": counts.pop("denoiser"), "vae": counts.pop("vae"),
            "text_encoders": sum(counts.values())}


def native_resolution(model: str) -> int:
    return architectures.NATIVE_RESOLUTION[model]


def estimate(model: str, *, train_mode: str = "full", checkpointing: bool = False,
             use_8bit_adam: bool = False, resolution: int | None = None, lora_rank: int | None = None,
             half_precision: bool = True, built: MetaModel | None = None) -> Estimate:
    """The peak of one training step of `model` (the denoiser trained; text encoders and VAE
    frozen), batch 1 with prior preservation, bf16 autocast (`half_precision`)."""
    family, modules = built or meta_models(model)
    resolution = resolution or native_resolution(model)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    denoiser = modules["denoiser"]
    if train_mode == "lora":
        defaults = TrainConfig()  # --lora-rank and --lora-targets at their defaults
        trainable = lora_adapters.lora_parameter_count(
            denoiser, lora_rank or defaults.lora_rank,
            family.lora_format.targets(defaults.lora_targets, denoiser))
        frozen = sum(counts.values())
    else:
        trainable, frozen = counts["denoiser"], sum(counts.values()) - counts["denoiser"]
    peak = memory_estimate.peak_bytes(
        trainable_params=trainable, frozen_params=frozen,
        activation_levels=family.activation_levels(denoiser.config, resolution // VAE_SCALE),
        images_per_step=IMAGES_PER_STEP, half_precision=half_precision,
        checkpointing=checkpointing, optimizer=memory_estimate.adam(use_8bit_adam), family=family)
    return Estimate(model, train_mode, checkpointing, use_8bit_adam, resolution, trainable, peak)
