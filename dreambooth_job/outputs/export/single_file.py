"""One `.safetensors` file in the original checkpoint layout of Stable Diffusion (LDM) and SDXL
(Stability's generative-models), the file AUTOMATIC1111, ComfyUI and `from_single_file` load.

diffusers reads this layout (diffusers/loaders/single_file_utils.py) but does not write it: the key
mapping here is the inverse of its `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint` and `convert_open_clip_checkpoint`, and the round-trip tests in
tests/unit/test_single_file_export.py and test_sdxl_single_file.py hold it to that. UNet and VAE
share one layout across the families (SDXL adds `label_emb`, its size/pooled-text embedding); the
text encoders' layout is the family's (`ModelFamily.single_file_text_encoders`): SD 1.x OpenAI CLIP,
SD 2.x OpenCLIP, SDXL both (`conditioner.embedders.0/1`). What is written, and the check before, are
the family's (`ModelFamily.single_file_state`, `check_single_file`): these converters are the UNet
families' defaults. FLUX.2 [klein] and FLUX.1 write their transformer alone in BFL's layout
(families/bfl_layout.py, flux2_layout.py, flux1_layout.py), under no prefix, as BFL ships it.

Loading the file back: diffusers guesses the architecture from a real-size checkpoint; for anything
else (or offline) pass the base model's diffusers directory as the config, to the `from_single_file`
of the base model's pipeline class (docs/user-guide.md, "Output layout", shows the call).
"""

from __future__ import annotations

import os

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.outputs.export.precision import cast_state_dict, write_atomically

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# diffusers name -> LDM name, for the pieces inside a UNet ResBlock and a VAE mid-block attention.
_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
                ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                  ("to_out.0.", "proj_out."))


def save_single_file(pipeline, path: str | os.PathLike, *, family, dtype=None,
                     metadata: dict[str, str] | None = None) -> None:
    """Write `pipeline` (of `family`, families.for_pipeline) to `path` as one original-layout checkpoint in
    `dtype` (a torch dtype or `fp16`/`bf16`/`fp32`; default fp16), with `metadata` (strings) in the
    safetensors header. Written to `<path>.partial` and renamed, so a crash never leaves a truncated
    file under `path`. The pipeline in memory is not changed (the cast is a copy).
    """
    import torch  # deferred: torch is heavy
    from safetensors.torch import save_file  # deferred: safetensors is heavy

    family.check_single_file(pipeline)
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str)
                                        for k, v in metadata.items()):
        raise InvalidInputError("single-file metadata must map strings to strings")
    state = {}
    for prefix, part in family.single_file_state(pipeline).items():
        state.update(_prefixed(prefix, part))
    state = cast_state_dict(state, dtype or torch.float16)
    write_atomically(path, lambda partial: save_file(state, partial,
                                                     metadata={"format": "pt", **(metadata or {})}))


def check_ldm_unet(unet_config, family_name: str, addition_embed_type: str | None) -> None:
    """Refuse (exit 2) a UNet without the LDM layout of its family: an upscaler's class embedding,
    or added embeddings the family does not have, would be written as a file the tools misread."""
    extra = unet_config.get("addition_embed_type")
    if unet_config.get("class_embed_type") or extra != addition_embed_type:
        raise InvalidInputError(
            f"--export-single-file cannot write this {family_name} base model: its UNet has "
            f"{'class' if unet_config.get('class_embed_type') else repr(extra)} embeddings, which "
            "the Stable Diffusion 1.x/2.x/XL checkpoint layout does not hold")


def clip_to_ldm(text_encoder) -> dict:
    """SD 1.x stores transformers' CLIPTextModel as is, under `text_model.`; transformers >= 5.6
    flattened that wrapper away (its keys start at `embeddings.`), so it is put back. The released
    checkpoints also hold the `position_ids` buffer (0..76) that newer transformers no longer save;
    it is written too, for loaders that expect every key of the original file."""
    import torch  # deferred: torch is heavy

    state = text_encoder.state_dict()
    if not hasattr(text_encoder, "text_model"):
        state = {f"text_model.{key}": tensor for key, tensor in state.items()}
    positions = text_encoder.config.max_position_embeddings
    state.setdefault("text_model.embeddings.position_ids", torch.arange(positions).unsqueeze(0))
    return state


def is_open_clip(text_encoder) -> bool:
    """SD 2.x's text encoder is OpenCLIP ViT-H converted to transformers' CLIPTextModel; it differs
    from SD 1.x's OpenAI CLIP ViT-L in its activation (gelu, not quick_gelu)."""
    return getattr(text_encoder.config, "hidden_act", "quick_gelu") == "gelu"


def open_clip_to_ldm(text_encoder) -> dict:
    """open_clip's TextTransformer keys (SD 2.x's `cond_stage_model.model.*`, SDXL's
    `conditioner.embedders.1.model.*`): q/k/v fused into one `in_proj`, layers renamed; the
    inverse of diffusers' `convert_open_clip_checkpoint`.

    diffusers' SD 2.x text encoder keeps 23 of OpenCLIP's 24 layers (SD 2.x conditions on the
    penultimate one), so the file has resblocks 0-22 and no `text_projection`: the loaders read
    the penultimate layer and do not use what is absent. SDXL's second encoder has all its layers
    and a projection (CLIPTextModelWithProjection), which open_clip keeps as a matrix that
    multiplies from the right: the transpose of the Linear's weight."""
    import torch  # deferred: torch is heavy

    state = text_encoder.state_dict()
    state = {key.removeprefix("text_model."): tensor for key, tensor in state.items()}
    projection = state.pop("text_projection.weight", None)
    out = {"token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": state.pop("final_layer_norm.weight"),
           "ln_final.bias": state.pop("final_layer_norm.bias")}
    if projection is not None:
        out["text_projection"] = projection.T.contiguous()
    state.pop("embeddings.position_ids", None)
    layers = {("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("self_attn.out_proj.", "attn.out_proj."),
              ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")}
    for index in range(text_encoder.config.num_hidden_layers):
        source, target = f"encoder.layers.{index}.", f"transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            projections = [state.pop(f"{source}self_attn.{name}_proj.{kind}") for name in "qkv"]
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(projections)
        for old, new in layers:
            for kind in ("weight", "bias"):
                out[f"{target}{new}{kind}"] = state.pop(f"{source}{old}{kind}")
    if state:
        raise InvalidInputError(f"--export-single-file cannot map the text encoder weight {min(state)}: "
                                "not an OpenCLIP layout")
    return out


def _prefixed(prefix: str, state: dict) -> dict:
    return {prefix + key: value for key, value in state.items()}


def unet_to_ldm(state: dict, config) -> dict:
    """Map a diffusers UNet2DConditionModel state dict to the LDM `openaimodel.UNetModel` keys.

    The LDM UNet numbers its blocks flat: `input_blocks.0` is conv_in, then each down block has
    `layers_per_block` entries (ResBlock `.0`, attention `.1`) and, but for the last, a downsampler
    entry; `output_blocks` likewise with one more layer per block and the upsampler after the
    attention (`.2`) or after the ResBlock (`.1`)."""
    per_block = config["layers_per_block"]
    renames = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
               ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
               ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
               ("mid_block.resnets.1.", "middle_block.2."),
               # SDXL's `text_time` embedding (pooled text + time ids), LDM's `label_emb` MLP.
               ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2.")]
    for block in range(len(config["down_block_types"])):
        for layer in range(per_block):
            entry = 1 + block * (per_block + 1) + layer
            renames.append((f"down_blocks.{block}.resnets.{layer}.", f"input_blocks.{entry}.0."))
            renames.append((f"down_blocks.{block}.attentions.{layer}.", f"input_blocks.{entry}.1."))
        entry = 1 + block * (per_block + 1) + per_block
        renames.append((f"down_blocks.{block}.downsamplers.0.conv.", f"input_blocks.{entry}.0.op."))
    for block, block_type in enumerate(config["up_block_types"]):
        for layer in range(per_block + 1):
            entry = block * (per_block + 1) + layer
            renames.append((f"up_blocks.{block}.resnets.{layer}.", f"output_blocks.{entry}.0."))
            renames.append((f"up_blocks.{block}.attentions.{layer}.", f"output_blocks.{entry}.1."))
        upsampler_slot = 2 if "CrossAttn" in block_type else 1
        renames.append((f"up_blocks.{block}.upsamplers.0.",
                        f"output_blocks.{block * (per_block + 1) + per_block}.{upsampler_slot}."))
    return _apply(state, renames, _unet_inner)


def _unet_inner(ldm_key: str) -> str:
    """ResBlocks (slot `.0` of an input/output entry, middle_block 0 and 2) rename their layers;
    attention blocks keep diffusers' names inside, and conv_in/downsamplers match no ResBlock name."""
    parts = ldm_key.split(".")
    if parts[0] == "middle_block" and parts[1] in ("0", "2"):
        split = 2
    elif parts[0] in ("input_blocks", "output_blocks") and parts[2] == "0":
        split = 3
    else:
        return ldm_key
    inner = ".".join(parts[split:])
    for old, new in _UNET_RESNET:
        if inner.startswith(old + "."):
            inner = new + inner[len(old):]
            break
    return ".".join(parts[:split] + [inner])


def vae_to_ldm(state: dict, config) -> dict:
    """Map a diffusers AutoencoderKL state dict to the LDM `AutoencoderKL` keys; the decoder's up
    blocks run in reverse order there, and the mid-block attention is 1x1 convolutions."""
    blocks = len(config["down_block_types"])
    renames = [(name, name) for name in ("encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.",
                                         "decoder.conv_out.", "quant_conv.", "post_quant_conv.")]
    renames += [("encoder.conv_norm_out.", "encoder.norm_out."),
                ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for side in ("encoder", "decoder"):
        renames += [(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1."),
                    (f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2."),
                    (f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.")]
    for block in range(blocks):
        renames += [(f"encoder.down_blocks.{block}.resnets.", f"encoder.down.{block}.block."),
                    (f"encoder.down_blocks.{block}.downsamplers.0.", f"encoder.down.{block}.downsample.")]
        ldm_block = blocks - 1 - block
        renames += [(f"decoder.up_blocks.{block}.resnets.", f"decoder.up.{ldm_block}.block."),
                    (f"decoder.up_blocks.{block}.upsamplers.0.", f"decoder.up.{ldm_block}.upsample.")]
    converted = _apply(state, renames, _vae_inner)
    for key, tensor in converted.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            converted[key] = tensor[:, :, None, None]  # Linear -> 1x1 Conv2d, as LDM's AttnBlock has
    return converted


def _vae_inner(ldm_key: str) -> str:
    key = ldm_key.replace(".conv_shortcut.", ".nin_shortcut.")
    if ".mid.attn_1." in key:
        head, _, inner = key.partition(".mid.attn_1.")
        for old, new in _VAE_ATTENTION:
            if inner.startswith(old):
                inner = new + inner[len(old):]
                break
        key = f"{head}.mid.attn_1.{inner}"
    return key


def _apply(state: dict, renames: list[tuple[str, str]], inner) -> dict:
    """Rename every key by the longest matching diffusers prefix, then its inner layer names; a key
    no rule covers is an architecture this mapping does not know, so it stops the export."""
    renames = sorted(renames, key=lambda rule: len(rule[0]), reverse=True)
    converted = {}
    for key, tensor in state.items():
        rule = next((r for r in renames if key.startswith(r[0])), None)
        if rule is None:
            raise InvalidInputError(f"--export-single-file cannot map the weight {key}: "
                                    "not a Stable Diffusion 1.x/2.x/XL layout")
        old, new = rule
        converted[inner(new + key[len(old):])] = tensor
    return converted
