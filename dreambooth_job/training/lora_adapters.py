"""LoRA adapters (Hu et al. 2021) on the denoiser and the CLIP text encoders, through `peft`.

    denoiser = family.denoiser(pipe)
    add_lora(denoiser, pipe.text_encoder, rank=16)       # base frozen, adapters trainable
    optimizer = torch.optim.AdamW(lora_parameters(denoiser) + lora_parameters(pipe.text_encoder))
    ...
    merge_lora(denoiser); merge_lora(pipe.text_encoder)  # plain modules again, for save_pretrained

The files each family publishes are its `LoraFormat`'s (families/lora_formats.py, outputs/lora_writers.py).

The adapters go in through diffusers' and transformers' own PEFT integration (`add_adapter`), so
the adapted modules are exactly what `pipe.load_lora_weights` builds when it reads our files.

Default targets are the attention projections, as in the paper and in diffusers'
train_dreambooth_lora.py: UNet `to_q`, `to_k`, `to_v`, `to_out.0` (self- and cross-attention),
text encoder `q_proj`, `k_proj`, `v_proj`, `out_proj`. `UNET_CONV_TARGETS` adds the ResNet
convolutions (kohya's "LoCon"), for UNets whose attention sees too little of the image to learn a
subject's colours (the toy world's UNet has attention only at 8x8).

`variant` (--lora-variant) picks the adapter kind: "lora" (B @ A), "dora" (peft's `use_dora`: LoRA
plus a learned magnitude per output row, the weight renormalised, Liu et al. 2024) or "lokr"
(peft's LoKrConfig: W + alpha/rank * kron(w1, w2), LyCORIS's LoKr; w2 low-rank when the rank is
small beside the layer's factors). All three start equal to the base and merge with `merge_lora`.
"""

from __future__ import annotations

from collections.abc import Sequence

from dreambooth_job.config.choices import DEFAULT_LORA_TARGETS, LORA_VARIANTS
from dreambooth_job.exit_codes import InvalidInputError

DEFAULT_UNET_TARGETS = DEFAULT_LORA_TARGETS  # --lora-target-modules' default
DEFAULT_TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
UNET_CONV_TARGETS = ("conv1", "conv2", "conv_shortcut")
"""The ResNet blocks' convolutions; add them to `target_modules` to adapt the convolutions too."""

ADAPTER_NAME = "default"


def add_lora(denoiser, text_encoder=None, *, rank: int = 16, alpha: float | None = None,
             dropout: float = 0.0, target_modules: Sequence[str] = DEFAULT_UNET_TARGETS,
             text_encoder_targets: Sequence[str] = DEFAULT_TEXT_ENCODER_TARGETS,
             variant: str = LORA_VARIANTS[0]) -> None:
    """Freeze `denoiser` (and `text_encoder`, when given) and add adapters of `variant` and `rank` to
    the layers named by the targets (a name matches a module whose dotted name ends with it).
    `alpha` defaults to `rank`, so the update is scaled by alpha/rank = 1."""
    alpha = rank if alpha is None else alpha
    if not isinstance(rank, int) or rank < 1:
        raise InvalidInputError(f"--lora-rank {rank!r} must be a whole number >= 1")
    if not alpha > 0:
        raise InvalidInputError(f"--lora-alpha {alpha!r} must be > 0")
    if not 0 <= dropout < 1:
        raise InvalidInputError(f"--lora-dropout {dropout!r} must be in [0, 1)")
    if variant not in LORA_VARIANTS:
        raise InvalidInputError(f"--lora-variant {variant!r} is not one of {', '.join(LORA_VARIANTS)}")
    if variant == "lokr" and dropout:
        # LoKr has no input dropout (peft's LoKrConfig drops ranks or whole modules instead).
        raise InvalidInputError("--lora-dropout applies to --lora-variant lora and dora, not lokr")
    for name, module, targets in (("denoiser", denoiser, target_modules),
                                  ("text encoder", text_encoder, text_encoder_targets)):
        if module is None:
            continue
        _check_targets(name, module, targets)
        module.requires_grad_(False)
        config = adapter_config(variant, rank=rank, alpha=alpha, dropout=dropout, targets=targets)
        if module is denoiser:
            denoiser.add_adapter(config, adapter_name=ADAPTER_NAME)
        else:
            _add_text_encoder_adapter(text_encoder, config)


def adapter_config(variant: str, *, rank: int, alpha: float, dropout: float, targets: Sequence[str]):
    """peft's config of `variant`'s adapters; each starts equal to the base."""
    from peft import LoKrConfig, LoraConfig  # deferred: peft is heavy

    if variant == "lokr":
        # peft's default init: w1 random, w2 zero (LyCORIS's).
        return LoKrConfig(r=rank, alpha=alpha, target_modules=list(targets))
    # Gaussian A and zero B, as diffusers' LoRA trainers; DoRA's magnitude starts at the base's norms.
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                      target_modules=list(targets), use_dora=variant == "dora")


def adapter_variant(config) -> str:
    """The --lora-variant a peft config was built for."""
    if type(config).__name__ == "LoKrConfig":
        return "lokr"
    return "dora" if getattr(config, "use_dora", False) else "lora"


def adapter_alpha(config) -> float:
    """The adapter's alpha, whatever the variant (LoraConfig.lora_alpha, LoKrConfig.alpha)."""
    return float(config.alpha if adapter_variant(config) == "lokr" else config.lora_alpha)


VARIANT_SUFFIXES = ("lora_magnitude_vector", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2",
                    "lokr_w2_a", "lokr_w2_b", "lokr_t2")
"""The tensor names (after the module's path in peft's state) of DoRA's magnitude and LoKr's factors."""


def split_variant_tensors(peft_state: dict) -> tuple[dict, dict[str, dict]]:
    """peft's adapter state as (its LoRA A/B tensors, {module path: {DoRA/LoKr tensor name: tensor}})."""
    lora_part, extras = {}, {}
    for key, value in peft_state.items():
        prefix, _, suffix = key.rpartition(".")
        if suffix in VARIANT_SUFFIXES:
            extras.setdefault(prefix, {})[suffix] = value
        else:
            lora_part[key] = value
    return lora_part, extras


def _add_text_encoder_adapter(text_encoder, config) -> None:
    """peft's own injection, as transformers' `add_adapter` does it: transformers 5.x refuses any
    peft older than 0.22, newer than the newest peft this project can install (0.21.2)."""
    from peft import inject_adapter_in_model  # deferred: peft is heavy

    inject_adapter_in_model(config, text_encoder, adapter_name=ADAPTER_NAME)
    text_encoder.peft_config = {ADAPTER_NAME: config}


def _check_targets(name: str, module, targets: Sequence[str]) -> None:
    """One line naming the target that adapts nothing, rather than peft's message (which lists every
    module of the model), and no silent no-op for a typo next to a good name."""
    if not targets:
        raise InvalidInputError(f"--lora-target-modules for the {name} is empty")
    for target in targets:
        if not any(_matches(layer_name, target) and adaptable(layer)
                   for layer_name, layer in module.named_modules()):
            raise InvalidInputError(
                f"--lora-target-modules {target!r} names no linear or convolution layer of the {name}")


def _matches(layer_name: str, target: str) -> bool:
    # peft's rule for a plain name: the whole dotted name, or its tail after a dot.
    return layer_name == target or layer_name.endswith("." + target)


def adaptable(layer) -> bool:
    """Whether peft can adapt `layer`: a linear or 2-d convolution layer."""
    import torch  # deferred: torch is heavy

    return isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))


def lora_parameters(module) -> list:
    """The parameters that train: the adapters' (add_lora froze everything else)."""
    if module is None:
        return []
    return [p for p in module.parameters() if p.requires_grad]


def lora_config(module):
    """The LoraConfig the module's adapter was built with (rank, alpha, targets)."""
    return module.peft_config[ADAPTER_NAME]


def has_lora(module) -> bool:
    return module is not None and ADAPTER_NAME in (getattr(module, "peft_config", None) or {})


def merge_lora(module):
    """Fold the adapters into the base weights (W += alpha/rank * B @ A) and remove them: the module
    is a plain diffusers/transformers module again, for `save_pretrained` or a single-file export.
    Works in place; returns the module."""
    from diffusers.utils import recurse_remove_peft_layers  # deferred: diffusers is heavy
    from peft.tuners.tuners_utils import BaseTunerLayer  # deferred: peft is heavy

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.merge(adapter_names=[ADAPTER_NAME])
    recurse_remove_peft_layers(module)
    # What diffusers' `unload_lora` clears too: without it save_pretrained would think an adapter
    # is still loaded.
    if hasattr(module, "peft_config"):
        del module.peft_config
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = False
    return module


def lora_parameter_count(module, rank: int, targets: Sequence[str]) -> int:
    """How many parameters rank-`rank` adapters on `targets` would add to `module`, from the layers'
    shapes alone (works on a model built on the meta device, so sd15's sizes need no 4 GB of RAM).
    Linear: A is rank x in, B is out x rank; Conv2d: A is rank x in x k x k, B is out x rank x 1 x 1.
    LoRA's count stands for the other variants: DoRA adds one magnitude per output row (under 1%
    more at rank 16), LoKr's Kronecker factors are fewer than LoRA's A and B."""
    import torch  # deferred: torch is heavy

    total = 0
    for name, layer in module.named_modules():
        if not any(_matches(name, target) for target in targets):
            continue
        if isinstance(layer, torch.nn.Linear):
            total += rank * (layer.in_features + layer.out_features)
        elif isinstance(layer, torch.nn.Conv2d):
            kernel = layer.kernel_size[0] * layer.kernel_size[1]
            total += rank * (layer.in_channels // layer.groups * kernel + layer.out_channels)
    return total
