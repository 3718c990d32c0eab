"""The LoRA files each family publishes, in each format (outputs/lora_writers.py writes them,
outputs/weight_files.py decides when): which pipeline modules carry adapters, diffusers'
`pytorch_lora_weights` (written by the family's pipeline class) and the single file kohya-ss
sd-scripts, AUTOMATIC1111 (models/Lora) and ComfyUI (LoraLoader) load. A family declares its
`LoraFormat` as `ModelFamily.lora_format`.

The generic part (peft's adapter tensors, the cast, the header, each module's alpha) is
outputs/lora_writers.py's; what differs between families is here:
- SD 1.x/2.x: diffusers' `StableDiffusionPipeline.save_lora_weights`; kohya keys with diffusers'
  UNet module names (`lora_unet_down_blocks_0_attentions_0_..._to_q`) and `lora_te_` for the
  text encoder.
- SDXL: `StableDiffusionXLPipeline.save_lora_weights`, which knows the second encoder; kohya's
  SDXL keys name the UNet's modules in SDXL's original layout (`lora_unet_input_blocks_4_1_
  transformer_blocks_0_attn1_to_q`, `lora_unet_middle_block_1_...`): kohya trains SDXL on that
  UNet; the encoders are `lora_te1_` and `lora_te2_`, and the header says
  `ss_base_model_version: sdxl_base_v1-0` (A1111 filters SDXL LoRAs by it).
- FLUX.2 [klein]: `Flux2KleinPipeline.save_lora_weights` (the transformer's adapters only);
  kohya keys name the original checkpoint's modules, q/k/v fused (families/flux2_lora.py).
- FLUX.1: `FluxPipeline.save_lora_weights` (the transformer's and CLIP-L's adapters); kohya keys
  name the original checkpoint's modules, q/k/v (and the single-stream MLP input) fused, CLIP-L as
  `lora_te1_` (families/flux1_lora.py).

Which adapter kinds (--lora-variant) a family's files hold is the format's too: `adapter_variants`
(refused at load time otherwise) and `diffusers_variants` (those the family's diffusers loader
reads; for the others only the kohya/LyCORIS file is written). SD and SDXL hold all three (DoRA's
magnitude as LyCORIS's `.dora_scale`, LoKr as `.lokr_w1`/`.lokr_w2[_a/_b]`); the FLUX families
LoRA and DoRA (a fused q/k/v layer's magnitude is its parts' stacked, bfl_layout.py), not LoKr
(Kronecker factors of q, k and v have no fused equivalent).

Which modules carry adapters is the format's too: `target_presets` (`--lora-targets attention|
attention-mlp|all`, the denoiser's) and `text_encoder_targets` (--train-text-encoder's), so that
each family's files hold every module it adapts. `--lora-target-modules` names modules instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dreambooth_job.config.choices import DEFAULT_LORA_TARGETS, LORA_VARIANTS
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.outputs.export.single_file import unet_to_ldm
from dreambooth_job.training.lora_adapters import (
    DEFAULT_TEXT_ENCODER_TARGETS,
    UNET_CONV_TARGETS,
    split_variant_tensors,
)

UNET_TARGET_PRESETS = {
    # The paper's and diffusers' DreamBooth LoRA targets: self- and cross-attention (the default).
    "attention": DEFAULT_LORA_TARGETS,
    # ...and the transformer blocks' GEGLU feed-forward.
    "attention-mlp": (*DEFAULT_LORA_TARGETS, "ff.net.0.proj", "ff.net.2"),
    # ...and the ResNet blocks' convolutions (kohya's LoCon).
    "all": (*DEFAULT_LORA_TARGETS, "ff.net.0.proj", "ff.net.2", *UNET_CONV_TARGETS),
}
CLIP_TEXT_ENCODER_TARGETS = DEFAULT_TEXT_ENCODER_TARGETS  # q/k/v/out_proj of CLIP's attention


class LoraFormat(ABC):
    """What a family's LoRA files look like."""

    components: tuple[str, ...]
    """Pipeline attributes that LoRA adapts, as diffusers' LoRA files name them; the denoiser
    first (whose adapters' rank and alpha the headers state)."""
    kohya_header: Mapping[str, str]
    """Header entries the single-file format adds for this family."""
    target_presets: Mapping[str, tuple[str, ...]]
    """The denoiser's adapted modules for each `--lora-targets` (config/choices.LORA_TARGET_PRESETS)."""
    text_encoder_targets: tuple[str, ...]
    """The text encoders' adapted modules (--train-text-encoder in LoRA mode)."""
    adapter_variants: tuple[str, ...] = ("lora",)
    """The --lora-variant values whose adapters the files hold."""
    diffusers_variants: tuple[str, ...] = ("lora",)
    """Those diffusers' `load_lora_weights` reads for this family (the diffusers file is written)."""

    def targets(self, preset: str, denoiser) -> list[str]:
        """The module names (peft's `target_modules`) of `preset` on this `denoiser`."""
        return list(self.target_presets[preset])

    def modules(self, pipeline) -> dict[str, Any]:
        """The pipeline's modules that may carry adapters, by component (None where absent)."""
        return {name: getattr(pipeline, name, None) for name in self.components}

    def kohya_module_names(self, name: str, prefixes: list[str], modules) -> dict[str, str]:
        """{kohya module name: peft prefix} for component `name`'s layers at `prefixes` (peft's
        module paths): the names `kohya_state` gives their LoKr tensors, where the format names
        each layer alone (outputs/lora_readers.py reads a LyCORIS file back by them). None here:
        a format that fuses layers in its file holds no LoKr (adapter_variants)."""
        return {}

    @abstractmethod
    def write_diffusers(self, directory, layers: Mapping[str, dict], *, weight_name: str,
                        save_function: Callable) -> None:
        """diffusers' LoRA file of `layers` ({component: adapter tensors under peft's names}) in
        `directory`, written through `save_function(tensors, filename)`."""

    @abstractmethod
    def kohya_state(self, adapters: Mapping[str, dict], modules: Mapping[str, Any]) -> dict[str, dict]:
        """{component: {kohya key: tensor}} of `adapters` ({component: peft state}); the
        `.alpha` entries hold the rank (diffusers' converter), which the writer replaces."""


@dataclass(frozen=True)
class UNetLoraFormat(LoraFormat):
    """The LoRA files of a diffusers family whose denoiser is a UNet2DConditionModel."""

    pipeline_class: str
    """The diffusers pipeline class whose `save_lora_weights` writes the diffusers file."""
    components: tuple[str, ...]
    original_unet_names: bool = False
    """Whether kohya's keys name the UNet's modules in the original checkpoint layout (SDXL)."""
    kohya_header: Mapping[str, str] = field(default_factory=dict)
    target_presets: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: UNET_TARGET_PRESETS)
    text_encoder_targets: tuple[str, ...] = CLIP_TEXT_ENCODER_TARGETS
    adapter_variants: tuple[str, ...] = LORA_VARIANTS
    # diffusers 0.42's SD/SDXL loaders take peft's DoRA keys (`lora_magnitude_vector`) but refuse
    # LoKr's (`lokr_w1`: "Invalid LoRA checkpoint"); only its Z-Image and FLUX.2 loaders read LoKr.
    diffusers_variants: tuple[str, ...] = ("lora", "dora")

    def write_diffusers(self, directory, layers, *, weight_name, save_function) -> None:
        import diffusers  # deferred: diffusers is heavy; the CLI and k8s builders start without it

        denoiser, *encoders = self.components
        writer = getattr(diffusers, self.pipeline_class)
        writer.save_lora_weights(
            directory, unet_lora_layers=layers.get(denoiser),
            **{f"{name}_lora_layers": layers.get(name) for name in encoders},
            weight_name=weight_name, save_function=save_function, safe_serialization=True)

    def kohya_state(self, adapters, modules) -> dict[str, dict]:
        from diffusers.utils.state_dict_utils import (  # deferred: diffusers is heavy
            convert_state_dict_to_kohya,
        )

        kohya = {}
        for name, peft_state in adapters.items():
            # DoRA's magnitudes and LoKr's factors keep peft's names under the module's kohya name
            # (outputs/lora_writers.py turns them into LyCORIS's).
            lora_part, extras = split_variant_tensors(peft_state)
            state = {}
            if lora_part:
                converted = convert_state_dict_to_kohya(
                    {f"{name}.{key}": v for key, v in self._module_names(name, lora_part, modules).items()})
                state = {self._key(key): value for key, value in converted.items()}
            for prefix, tensors in extras.items():
                module = self._kohya_module(name, prefix, modules)
                state.update({f"{module}.{suffix}": value for suffix, value in tensors.items()})
            kohya[name] = state
        return kohya

    def _module_names(self, name: str, state: dict, modules) -> dict:
        if name == self.components[0] and self.original_unet_names:
            # The single-file export's mapping (diffusers' reader inverted):
            # `down_blocks.1.attentions.0.` -> `input_blocks.4.1.`, `conv1` -> `in_layers.2`.
            return unet_to_ldm(state, modules[name].config)
        return state

    def _kohya_module(self, name: str, prefix: str, modules) -> str:
        """The kohya name of the module at peft's `prefix` (`lora_unet_down_blocks_0_..._to_q`)."""
        return next(iter(self.kohya_module_names(name, [prefix], modules)))

    def kohya_module_names(self, name: str, prefixes: list[str], modules) -> dict[str, str]:
        """Through the converter that names the LoRA keys, on a stand-in A and B per layer whose
        value is the layer's index. A layer the original UNet layout has no name for (SDXL) is
        left out: no adapter of ours sits on it."""
        import torch  # deferred: torch is heavy
        from diffusers.utils.state_dict_utils import (  # deferred: diffusers is heavy
            convert_state_dict_to_kohya,
        )

        stand_in: dict[str, Any] = {}
        for index, prefix in enumerate(prefixes):
            pair = {f"{prefix}.lora_{part}.weight": torch.full((1, 1), float(index)) for part in "AB"}
            try:
                stand_in.update(self._module_names(name, pair, modules))
            except InvalidInputError:
                if len(prefixes) == 1:
                    raise
        converted = convert_state_dict_to_kohya({f"{name}.{key}": v for key, v in stand_in.items()})
        return {self._key(key.removesuffix(".lora_down.weight")): prefixes[int(value.item())]
                for key, value in converted.items() if key.endswith(".lora_down.weight")}

    def _key(self, key: str) -> str:
        # diffusers names the first text encoder as SDXL's (`lora_te1_`); SD 1.x files say `lora_te_`.
        if len(self.components) == 2 and key.startswith("lora_te1_"):
            return "lora_te_" + key.removeprefix("lora_te1_")
        return key


@dataclass(frozen=True)
class TransformerLoraFormat(LoraFormat):
    """The LoRA files of a diffusers family whose denoiser is a transformer that diffusers'
    pipeline saves alone (`transformer_lora_layers`); each family names its kohya keys
    (`kohya_state`: FLUX.2's in flux2_lora.py, FLUX.1's in flux1_lora.py)."""

    pipeline_class: str
    components: tuple[str, ...] = ("transformer",)
    kohya_header: Mapping[str, str] = field(default_factory=dict)
    target_presets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    text_encoder_targets: tuple[str, ...] = ()

    def write_diffusers(self, directory, layers, *, weight_name, save_function) -> None:
        import diffusers  # deferred: diffusers is heavy; the CLI and k8s builders start without it

        writer = getattr(diffusers, self.pipeline_class)
        writer.save_lora_weights(directory, transformer_lora_layers=layers.get(self.components[0]),
                                 weight_name=weight_name, save_function=save_function,
                                 safe_serialization=True)

