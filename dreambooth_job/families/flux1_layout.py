"""FLUX.1's original (BFL) checkpoint names against diffusers' `FluxTransformer2DModel` ([dev] and
[schnell]; schnell has no guidance embedder): the one key map that the single-file export (flux1.py)
and the kohya-style LoRA file (flux1_lora.py) share. It inverts diffusers'
`convert_flux_transformer_checkpoint_to_diffusers` (loaders/single_file_utils.py); its LoRA names
are those `_convert_kohya_flux_lora_to_diffusers` (loaders/lora_conversion_utils.py) reads.

Unlike FLUX.2, every linear module has a bias, which the fusions stack as they stack the weights;
a single-stream block's `linear1` fuses q, k, v and the MLP's input (3 x width + 4 x width rows).
"""

from __future__ import annotations

from dreambooth_job.families.bfl_layout import BflLayout

FLUX1_LAYOUT = BflLayout(
    top={
        "img_in": ("x_embedder",), "txt_in": ("context_embedder",),
        "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
        "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2",),
        "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",),
        "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
        "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",),
        "guidance_in.out_layer": ("time_text_embed.guidance_embedder.linear_2",),
        "final_layer.linear": ("proj_out",),
        "final_layer.adaLN_modulation.1": ("norm_out.linear",),
    },
    double={
        "img_mod.lin": ("norm1.linear",), "txt_mod.lin": ("norm1_context.linear",),
        "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "img_attn.norm.query_norm": ("attn.norm_q",), "img_attn.norm.key_norm": ("attn.norm_k",),
        "img_attn.proj": ("attn.to_out.0",),
        "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",),
        "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
        "txt_attn.norm.query_norm": ("attn.norm_added_q",),
        "txt_attn.norm.key_norm": ("attn.norm_added_k",),
        "txt_attn.proj": ("attn.to_add_out",),
        "txt_mlp.0": ("ff_context.net.0.proj",), "txt_mlp.2": ("ff_context.net.2",),
    },
    single={
        "modulation.lin": ("norm.linear",),
        "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
        "linear2": ("proj_out",),
        "norm.query_norm": ("attn.norm_q",), "norm.key_norm": ("attn.norm_k",),
    },
)
