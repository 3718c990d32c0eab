"""FLUX.2's LoRA files: diffusers' (`Flux2KleinPipeline.save_lora_weights`) and the kohya-style
single file, whose keys name the original (BFL) checkpoint's modules: `lora_unet_double_blocks_N_
img_attn_qkv`, `..._img_attn_proj`, `..._img_mlp_0`, `lora_unet_single_blocks_N_linear1`.

The original layout fuses the attention's q, k and v into one projection (`qkv`); diffusers splits
it into `to_q`, `to_k`, `to_v`. Their adapters are written as one fused adapter of three times the
rank: the three A matrices stacked, the B matrices block-diagonal, which is exactly their sum of
updates; B carries a factor 3 because the loaders scale by alpha / rank and the rank tripled.
The key map is diffusers' reader inverted (loaders/lora_conversion_utils.py,
`_convert_kohya_flux2_lora_to_diffusers`); tests/unit/test_flux2_family.py loads the file through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreambooth_job.families.lora_formats import TransformerLoraFormat

# diffusers' module (within transformer_blocks.N.) -> the original module (within double_blocks.N.).
DOUBLE_BLOCK_MODULES = {
    "attn.to_out.0": "img_attn_proj", "attn.to_add_out": "txt_attn_proj",
    "ff.linear_in": "img_mlp_0", "ff.linear_out": "img_mlp_2",
    "ff_context.linear_in": "txt_mlp_0", "ff_context.linear_out": "txt_mlp_2",
}
DOUBLE_BLOCK_FUSED = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
SINGLE_BLOCK_MODULES = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2"}
OUTER_MODULES = {
    "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in_in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in_out_layer", "proj_out": "final_layer_linear",
}


@dataclass(frozen=True)
class Flux2LoraFormat(TransformerLoraFormat):
    """FLUX.2's LoRA files (the module docs)."""

    def kohya_state(self, adapters, modules) -> dict[str, dict]:
        """{"transformer": {kohya key: tensor}}; refuses (ValueError) an adapted module the
        original layout has no name for."""
        import torch  # deferred: torch is heavy

        state = adapters.get(self.components[0], {})
        pairs = {key.removesuffix(".lora_A.weight"): (state[key], state[key.replace("lora_A", "lora_B")])
                 for key in state if key.endswith(".lora_A.weight")}
        kohya = {}

        def put(name, down, up):
            kohya.update({f"lora_unet_{name}.lora_down.weight": down,
                          f"lora_unet_{name}.lora_up.weight": up,
                          f"lora_unet_{name}.alpha": torch.tensor(float(down.shape[0]))})

        for path in sorted(pairs):
            name = _original_name(path)
            if name is None and not _fused_part(path):
                raise ValueError(f"no original FLUX.2 name for the adapted module {path}")
            if name is not None:
                put(name, *pairs.pop(path))
        for block in sorted({p.split(".")[1] for p in pairs}, key=int):
            for fused, parts in DOUBLE_BLOCK_FUSED.items():
                present = [pairs.get(f"transformer_blocks.{block}.{part}") for part in parts]
                if not any(present):
                    continue
                down_like, up_like = next(p for p in present if p is not None)
                downs = [p[0] if p else torch.zeros_like(down_like) for p in present]
                ups = [p[1] if p else torch.zeros_like(up_like) for p in present]
                put(f"double_blocks_{block}_{fused}", torch.cat(downs), len(parts) * torch.block_diag(*ups))
        return {self.components[0]: kohya}


def _original_name(path: str) -> str | None:
    """The kohya name (after `lora_unet_`) of an unfused module, or None."""
    if path in OUTER_MODULES:
        return OUTER_MODULES[path]
    stack, _, rest = path.partition(".")
    block, _, module = rest.partition(".")
    table = {"transformer_blocks": ("double_blocks", DOUBLE_BLOCK_MODULES),
             "single_transformer_blocks": ("single_blocks", SINGLE_BLOCK_MODULES)}.get(stack)
    if table is None or module not in table[1]:
        return None
    return f"{table[0]}_{block}_{table[1][module]}"


def _fused_part(path: str) -> bool:
    stack, _, rest = path.partition(".")
    module = rest.partition(".")[2]
    return stack == "transformer_blocks" and any(module in parts for parts in DOUBLE_BLOCK_FUSED.values())
