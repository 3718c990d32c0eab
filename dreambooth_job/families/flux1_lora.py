"""FLUX.1's LoRA files: diffusers' (`FluxPipeline.save_lora_weights`: the transformer's adapters
and CLIP-L's) and the kohya-style single file kohya's sd-scripts writes for FLUX.1 and ComfyUI's
LoraLoader reads, whose keys name the original (BFL) checkpoint's modules with `.` as `_`:
`lora_unet_double_blocks_N_img_attn_qkv`, `..._img_attn_proj`, `..._img_mlp_0`,
`lora_unet_single_blocks_N_linear1`, `..._linear2`, and `lora_te1_text_model_encoder_...` for
CLIP-L (sd-scripts' `lora_te1`; T5 would be `lora_te3`, which nothing here trains).

The original layout fuses projections diffusers splits: a double-stream block's attention q, k, v
(`img_attn.qkv`, `txt_attn.qkv`), and a single-stream block's q, k, v and MLP input (`linear1`, rows
in that order). Their adapters are written as one fused adapter (lora_formats.fused_adapter): the
downs stacked, the ups block-diagonal, zeros for a part without an adapter. The key map is
diffusers' reader inverted (loaders/lora_conversion_utils.py, `_convert_kohya_flux_lora_to_diffusers`,
which reads `linear1` with FLUX.1's own widths, 3 x 3072 + 12288: a model of other widths loads
the double-stream keys only); tests/unit/test_flux1_family.py loads the file through it. Outside
the blocks (`img_in`, `txt_in`, `time_in_*`, `vector_in_*`, `guidance_in_*`, `final_layer_linear`)
the names are the original modules' too, which ComfyUI maps for any module; diffusers 0.42's
reader drops those keys (it converts them without the `transformer.` prefix), so adapters there
reach diffusers through its own file only. `norm_out.linear` (`final_layer_adaLN_modulation_1`,
whose shift and scale halves the original swaps) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreambooth_job.families.lora_formats import TransformerLoraFormat, fused_adapter

TEXT_ENCODER_PREFIX = "lora_te1_"
"""CLIP-L's keys in sd-scripts' FLUX.1 files (and the prefix diffusers' FLUX reader takes)."""

# diffusers' module (within transformer_blocks.N.) -> the original module (within double_blocks.N.).
DOUBLE_BLOCK_MODULES = {
    "attn.to_out.0": "img_attn_proj", "attn.to_add_out": "txt_attn_proj",
    "ff.net.0.proj": "img_mlp_0", "ff.net.2": "img_mlp_2", "norm1.linear": "img_mod_lin",
    "ff_context.net.0.proj": "txt_mlp_0", "ff_context.net.2": "txt_mlp_2",
    "norm1_context.linear": "txt_mod_lin",
}
# diffusers' module (within single_transformer_blocks.N.) -> the original (within single_blocks.N.).
SINGLE_BLOCK_MODULES = {"proj_out": "linear2", "norm.linear": "modulation_lin"}
# Fused original modules and the diffusers modules they hold, in the original's row order.
FUSED = {
    ("transformer_blocks", "double_blocks"): {
        "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")},
    ("single_transformer_blocks", "single_blocks"): {
        "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")},
}
OUTER_MODULES = {
    "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in_in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in_out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in_in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in_out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in_in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in_out_layer",
    "proj_out": "final_layer_linear",
}


@dataclass(frozen=True)
class Flux1LoraFormat(TransformerLoraFormat):
    """FLUX.1's LoRA files (the module docs): the transformer, and CLIP-L when it trains."""

    components: tuple[str, ...] = ("transformer", "text_encoder")

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
        kohya = {transformer: _transformer_state(adapters.get(transformer, {}), modules[transformer])}
        if text_encoder in adapters:
            kohya[text_encoder] = _text_encoder_state(adapters[text_encoder])
        return kohya


def _transformer_state(state: dict, transformer) -> dict:
    import torch  # deferred: torch is heavy

    pairs = {key.removesuffix(".lora_A.weight"): (state[key], state[key.replace("lora_A", "lora_B")])
             for key in state if key.endswith(".lora_A.weight")}
    kohya = {}

    def put(name, down, up):
        kohya.update({f"lora_unet_{name}.lora_down.weight": down, f"lora_unet_{name}.lora_up.weight": up,
                      f"lora_unet_{name}.alpha": torch.tensor(float(down.shape[0]))})

    fused_paths = {f"{stack}.{block}.{part}" for (stack, _), table in FUSED.items()
                   for block in _blocks(pairs, stack) for parts in table.values() for part in parts}
    for path in sorted(set(pairs) - fused_paths):
        name = _original_name(path)
        if name is None:
            raise ValueError(f"no original FLUX.1 name for the adapted module {path}")
        put(name, *pairs[path])
    for (stack, original), table in FUSED.items():
        for block in _blocks(pairs, stack):
            for fused, parts in table.items():
                paths = [f"{stack}.{block}.{part}" for part in parts]
                if any(p in pairs for p in paths):
                    rows = [transformer.get_submodule(p).out_features for p in paths]
                    put(f"{original}_{block}_{fused}", *fused_adapter([pairs.get(p) for p in paths], rows))
    return kohya


def _blocks(pairs, stack: str) -> list[str]:
    return sorted({p.split(".")[1] for p in pairs if p.startswith(stack + ".")}, key=int)


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


def _text_encoder_state(state: dict) -> dict:
    """CLIP-L's adapters under sd-scripts' names: diffusers' kohya converter, `lora_te1_` prefix."""
    from diffusers.utils.state_dict_utils import (  # deferred: diffusers is heavy
        convert_state_dict_to_kohya,
    )

    converted = convert_state_dict_to_kohya({f"text_encoder.{key}": v for key, v in state.items()})
    assert all(key.startswith(TEXT_ENCODER_PREFIX) for key in converted), sorted(converted)[:3]
    return converted
