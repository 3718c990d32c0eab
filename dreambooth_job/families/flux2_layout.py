"""FLUX.2's original (BFL) checkpoint names against diffusers' `Flux2Transformer2DModel` (klein 4B
and 9B, and FLUX.2 [dev] with its guidance embedder): the one key map that the single-file export
(flux2.py) and the kohya-style LoRA file (flux2_lora.py) share. It inverts diffusers'
`convert_flux2_transformer_checkpoint_to_diffusers` (loaders/single_file_utils.py); its LoRA
names are those `_convert_kohya_flux2_lora_to_diffusers` (loaders/lora_conversion_utils.py) reads.
"""

from __future__ import annotations

from dreambooth_job.families.bfl_layout import BflLayout

FLUX2_LAYOUT = BflLayout(
    top={
        "img_in": ("x_embedder",), "txt_in": ("context_embedder",),
        "time_in.in_layer": ("time_guidance_embed.timestep_embedder.linear_1",),
        "time_in.out_layer": ("time_guidance_embed.timestep_embedder.linear_2",),
        "guidance_in.in_layer": ("time_guidance_embed.guidance_embedder.linear_1",),
        "guidance_in.out_layer": ("time_guidance_embed.guidance_embedder.linear_2",),
        "double_stream_modulation_img.lin": ("double_stream_modulation_img.linear",),
        "double_stream_modulation_txt.lin": ("double_stream_modulation_txt.linear",),
        "single_stream_modulation.lin": ("single_stream_modulation.linear",),
        "final_layer.linear": ("proj_out",),
        "final_layer.adaLN_modulation.1": ("norm_out.linear",),
    },
    double={
        "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "img_attn.norm.query_norm": ("attn.norm_q",), "img_attn.norm.key_norm": ("attn.norm_k",),
        "img_attn.proj": ("attn.to_out.0",),
        "img_mlp.0": ("ff.linear_in",), "img_mlp.2": ("ff.linear_out",),
        "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
        "txt_attn.norm.query_norm": ("attn.norm_added_q",),
        "txt_attn.norm.key_norm": ("attn.norm_added_k",),
        "txt_attn.proj": ("attn.to_add_out",),
        "txt_mlp.0": ("ff_context.linear_in",), "txt_mlp.2": ("ff_context.linear_out",),
    },
    single={
        "linear1": ("attn.to_qkv_mlp_proj",), "linear2": ("attn.to_out",),
        "norm.query_norm": ("attn.norm_q",), "norm.key_norm": ("attn.norm_k",),
    },
)
