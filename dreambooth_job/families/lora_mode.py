"""LoRA as a train mode (`--train-mode lora`): the same DreamBooth objective, prior preservation
included, trained on low-rank adapters (Hu et al. 2021) while the base weights stay frozen.

    mode = train_mode(config, family, pipe)   # families.train_mode: LoraTrainMode for --train-mode lora
    Trainer(config, pipe, ..., mode=mode)

`trainable_parameters` adds peft adapters (lora_adapters.add_lora) to the denoiser's layers that
--lora-targets (the family's presets, LoraFormat.target_presets) or --lora-target-modules name and,
with --train-text-encoder, to each text encoder's attention projections (the family's
`text_encoder_targets`); only the adapters' parameters reach the optimizer. The Trainer keeps the
frozen base in the compute dtype (fp16/bf16 under mixed precision, as diffusers' LoRA trainer
does) and the adapters in fp32, and its checkpoints hold the trainable parameters only
(training/state.py): the adapters and their AdamW moments, not the frozen base.

What a LoRA run publishes is `save` below (`save_merged_pipeline` for now).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from dreambooth_job.config.choices import DEFAULT_LORA_TARGETS, LORA_TARGET_PRESETS, LORA_VARIANTS
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families.base import ModelFamily, TrainMode
from dreambooth_job.families.lora_formats import CLIP_TEXT_ENCODER_TARGETS
from dreambooth_job.training import lora_adapters

logger = logging.getLogger("dreambooth_job")


class LoraTrainMode(TrainMode):
    name = "lora"
    frozen_base = True

    def __init__(self, *, rank: int, alpha: float, dropout: float, unet_targets: list[str],
                 seed: int = 0, text_encoder_targets: tuple[str, ...] = CLIP_TEXT_ENCODER_TARGETS,
                 variant: str = LORA_VARIANTS[0]):
        self.rank, self.alpha, self.dropout, self.variant = rank, alpha, dropout, variant
        self.unet_targets = list(unet_targets)
        self.text_encoder_targets = tuple(text_encoder_targets)
        self.seed = seed

    @classmethod
    def from_config(cls, config, family: ModelFamily, pipeline) -> LoraTrainMode:
        """The adapters `config` asks of `family`'s `pipeline`: its --lora-targets preset, or
        --lora-target-modules when they name other layers than their default. A --lora-variant
        the family's LoRA files cannot hold is refused here, before any training."""
        check_variant(config.lora_variant, family)
        return cls(rank=config.lora_rank, alpha=config.resolved_lora_alpha,
                   dropout=config.lora_dropout, unet_targets=denoiser_targets(config, family, pipeline),
                   seed=config.seed, text_encoder_targets=family.lora_format.text_encoder_targets,
                   variant=config.lora_variant)

    def trainable_parameters(self, modules: dict[str, Any]) -> list:
        """Adapters on `modules` (ModelFamily.trainable_modules: the denoiser first, then the text
        encoders that train); their parameters, in that order: the optimizer's, and so the
        checkpoints' order."""
        import torch  # deferred: torch is heavy

        options = {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                   "variant": self.variant}
        modules = dict(modules)
        denoiser = modules.pop("denoiser")
        # The adapters' random init (peft draws it from torch's global generator, on the CPU) is
        # the seed's: two runs of one config start alike, so a resumed run ends like the other.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            lora_adapters.add_lora(denoiser, target_modules=self.unet_targets, **options)
            for encoder in modules.values():
                lora_adapters.add_lora(None, encoder, text_encoder_targets=self.text_encoder_targets,
                                       **options)
        return [p for module in (denoiser, *modules.values()) for p in lora_adapters.lora_parameters(module)]

    def save(self, family: ModelFamily, pipeline, directory: str | Path) -> None:
        save_merged_pipeline(family, pipeline, directory)


def check_variant(variant: str, family: ModelFamily) -> None:
    """Exit 2 for a --lora-variant whose adapters `family`'s LoRA files cannot hold."""
    supported = family.lora_format.adapter_variants
    if variant not in supported:
        raise InvalidInputError(f"--lora-variant {variant}: {family.name}'s LoRA files hold only "
                                f"{', '.join(supported)} adapters")


def denoiser_targets(config, family: ModelFamily, pipeline) -> list[str]:
    """--lora-target-modules when it names other layers than its default, else the family's
    --lora-targets preset (SD's and SDXL's `attention` is that default: the same adapters)."""
    if tuple(config.lora_target_modules) != DEFAULT_LORA_TARGETS:
        if config.lora_targets != LORA_TARGET_PRESETS[0]:
            logger.warning("--lora-target-modules names the adapted layers; --lora-targets %s is not used",
                           config.lora_targets)
        return list(config.lora_target_modules)
    return family.lora_format.targets(config.lora_targets, family.denoiser(pipeline))


def save_merged_pipeline(family: ModelFamily, pipeline, directory: str | Path) -> None:
    """The pipeline with its adapters folded into the weights (W + alpha/rank * B @ A), in fp32,
    as a plain diffusers directory `from_pretrained` loads. Merges copies: the pipeline keeps its
    adapters (evaluation samples it after this)."""
    import torch  # deferred: torch is heavy

    merged = copy.copy(pipeline)  # shallow: only the adapted modules are replaced below
    for name in (family.denoiser_name, *family.text_encoder_names):
        module = getattr(pipeline, name)
        if lora_adapters.has_lora(module):
            # fp32 before merging: a bf16 base would round most of a small update away.
            plain = lora_adapters.merge_lora(copy.deepcopy(module).to("cpu", torch.float32))
            setattr(merged, name, plain)
    family.save_pipeline(merged, directory)
