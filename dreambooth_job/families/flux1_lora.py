"""FLUX.1's LoRA files: diffusers' (`FluxPipeline.save_lora_weights`: the transformer's adapters
and CLIP-L's) and the kohya-style single file kohya's sd-scripts writes for FLUX.1 and ComfyUI's
LoraLoader reads, whose keys name the original (BFL) checkpoint's modules with `.` as `_`
(flux1_layout.py, the key map the single-file export uses too):
`lora_unet_double_blocks_N_img_attn_qkv`, `..._img_attn_proj`, `..._img_mlp_0`,
`lora_unet_single_blocks_N_linear1`, `..._linear2`, and `lora_te1_text_model_encoder_...` for
CLIP-L (sd-scripts' `lora_te1`; T5 would be `lora_te3`, which nothing here trains).

The original layout fuses projections diffusers splits: a double-stream block's attention q, k, v
(`img_attn.qkv`, `txt_attn.qkv`), and a single-stream block's q, k, v and MLP input (`linear1`, rows
in that order). Their adapters are written as one fused adapter (bfl_layout.original_lora), zeros
of the module's own rows for a part without one. diffusers reads the file
(loaders/lora_conversion_utils.py, `_convert_kohya_flux_lora_to_diffusers`, which splits `linear1`
at FLUX.1's own widths, 3 x 3072 + 12288: a model of other widths loads the double-stream keys
only); tests/unit/test_flux1_family.py loads the file through it. Outside the blocks (`img_in`,
`txt_in`, `time_in_*`, `vector_in_*`, `guidance_in_*`, `final_layer_linear`) the names are the
original modules' too, which ComfyUI maps for any module; diffusers 0.42's reader drops those keys
(it converts them without the `transformer.` prefix), so adapters there reach diffusers through its
own file only.

The targets (`--lora-targets`), as diffusers' train_dreambooth_lora_flux.py names them: `attention`
adapts every block's attention (the double-stream blocks' image and text q, k, v and output
projections, the single-stream blocks' q, k, v); `attention-mlp` adds the double-stream blocks'
feed-forwards (the trainer's default list); `all` adds the single-stream blocks' MLP input
(`proj_mlp`, so `linear1` is adapted whole) and their output `proj_out` (`linear2`). CLIP-L's
projections are q/k/v/out_proj.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dreambooth_job.families.bfl_layout import kohya_lora
from dreambooth_job.families.flux1_layout import FLUX1_LAYOUT
from dreambooth_job.families.lora_formats import CLIP_TEXT_ENCODER_TARGETS, TransformerLoraFormat
from dreambooth_job.training.lora_adapters import split_variant_tensors

TEXT_ENCODER_PREFIX = "lora_te1_"
"""CLIP-L's keys in sd-scripts' FLUX.1 files (and the prefix diffusers' FLUX reader takes)."""
_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_MLP = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
FLUX1_TARGET_PRESETS = {
    "attention": _ATTENTION,
    "attention-mlp": _ATTENTION + _MLP,
    # `proj_out` alone would also name the final layer's projection: `targets` names each block's.
    "all": _ATTENTION + _MLP + ("proj_mlp",),
}


@dataclass(frozen=True)
class Flux1LoraFormat(TransformerLoraFormat):
    """FLUX.1's LoRA files (the module docs): the transformer, and CLIP-L when it trains."""

    components: tuple[str, ...] = ("transformer", "text_encoder")
    target_presets: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: FLUX1_TARGET_PRESETS)
    text_encoder_targets: tuple[str, ...] = CLIP_TEXT_ENCODER_TARGETS
    # DoRA's magnitudes fuse with q/k/v (and linear1's MLP input) as their rows do
    # (bfl_layout.original_magnitudes); LoKr's Kronecker factors have no fused equivalent.
    adapter_variants: tuple[str, ...] = ("lora", "dora")
    diffusers_variants: tuple[str, ...] = ("lora", "dora")

    def targets(self, preset: str, denoiser) -> list[str]:
        names = list(self.target_presets[preset])
        if preset == "all":
            names += [f"single_transformer_blocks.{i}.proj_out"
                      for i in range(denoiser.config.num_single_layers)]
        return names

    def write_diffusers(self, directory, layers, *, weight_name, save_function) -> None:
        import diffusers  # deferred: diffusers is heavy; the CLI and k8s builders start without it

        transformer, text_encoder = self.components
        getattr(diffusers, self.pipeline_class).save_lora_weights(
            directory, transformer_lora_layers=layers.get(transformer),
            text_encoder_lora_layers=layers.get(text_encoder), weight_name=weight_name,
            save_function=save_function, safe_serialization=True)

    def kohya_state(self, adapters, modules) -> dict[str, dict]:
        """{"transformer": {kohya key: tensor}, "text_encoder": ...}; refuses (ValueError) an
        adapted module the original layout has no name for."""
        transformer, text_encoder = self.components
        kohya = {transformer: kohya_lora(FLUX1_LAYOUT, adapters.get(transformer, {}), modules[transformer])}
        if text_encoder in adapters:
            kohya[text_encoder] = _text_encoder_state(adapters[text_encoder])
        return kohya


def _text_encoder_state(state: dict) -> dict:
    """CLIP-L's adapters under sd-scripts' names: diffusers' kohya converter, `lora_te1_` prefix;
    DoRA's magnitudes under the same module names (peft's tensor name, for the writer)."""
    from diffusers.utils.state_dict_utils import (  # deferred: diffusers is heavy
        convert_state_dict_to_kohya,
    )

    lora_part, extras = split_variant_tensors(state)
    converted = convert_state_dict_to_kohya({f"text_encoder.{key}": v for key, v in lora_part.items()})
    assert all(key.startswith(TEXT_ENCODER_PREFIX) for key in converted), sorted(converted)[:3]
    for prefix, tensors in extras.items():  # the converter's naming: the module path, '.' as '_'
        module = TEXT_ENCODER_PREFIX + prefix.replace(".", "_")
        converted.update({f"{module}.{suffix}": value for suffix, value in tensors.items()})
    return converted
