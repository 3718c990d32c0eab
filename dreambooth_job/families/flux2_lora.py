"""FLUX.2's LoRA files: diffusers' (`Flux2KleinPipeline.save_lora_weights`) and the kohya-style
single file, whose keys name the original (BFL) checkpoint's modules (flux2_layout.py, the key map
the single-file export uses too): `lora_unet_double_blocks_N_img_attn_qkv`, `..._img_attn_proj`,
`..._img_mlp_0`, `lora_unet_single_blocks_N_linear1`, `..._linear2`.

Each name is a weight of the original single-file transformer with `.` written `_`, which is how
ComfyUI's LoraLoader finds it (comfy/lora.py, `model_lora_keys_unet`: `lora_unet_<key>` for every
`diffusion_model.<key>.weight`). diffusers reads the file too (loaders/lora_conversion_utils.py,
`_convert_kohya_flux2_lora_to_diffusers`); tests/unit/test_flux2_files.py checks both.

The targets: `--lora-targets attention` adapts the double-stream blocks' image and text attention
(q, k, v and output projections); `attention-mlp` adds their feed-forwards (image and text);
`all` adds the single-stream blocks, whose `to_qkv_mlp_proj` fuses attention and MLP input and
whose `to_out` their outputs. The Qwen3 text encoder's projections are q/k/v/o_proj.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dreambooth_job.families.bfl_layout import kohya_lora
from dreambooth_job.families.flux2_layout import FLUX2_LAYOUT
from dreambooth_job.families.lora_formats import TransformerLoraFormat

_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_MLP = ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out")
FLUX2_TARGET_PRESETS = {
    "attention": _ATTENTION,
    "attention-mlp": _ATTENTION + _MLP,
    # The single-stream blocks' output projection is `attn.to_out`, a name that also ends the
    # double-stream blocks' `attn.to_out` list (not a layer): `targets` names each block's.
    "all": _ATTENTION + _MLP + ("to_qkv_mlp_proj",),
}
QWEN3_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Flux2LoraFormat(TransformerLoraFormat):
    """FLUX.2's LoRA files (the module docs)."""

    target_presets: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: FLUX2_TARGET_PRESETS)
    text_encoder_targets: tuple[str, ...] = QWEN3_TARGETS
    # DoRA's magnitudes fuse with q/k/v as their rows do (bfl_layout.original_magnitudes). LoKr's
    # Kronecker factors of q, k and v have no fused equivalent in the original layout.
    adapter_variants: tuple[str, ...] = ("lora", "dora")
    diffusers_variants: tuple[str, ...] = ("lora", "dora")

    def targets(self, preset: str, denoiser) -> list[str]:
        names = list(self.target_presets[preset])
        if preset == "all":
            names += [f"single_transformer_blocks.{i}.attn.to_out"
                      for i in range(denoiser.config.num_single_layers)]
        return names

    def kohya_state(self, adapters, modules) -> dict[str, dict]:
        """{"transformer": {kohya key: tensor}}; refuses (ValueError) an adapted module the
        original layout has no name for."""
        transformer = self.components[0]
        return {transformer: kohya_lora(FLUX2_LAYOUT, adapters.get(transformer, {}), modules[transformer])}
