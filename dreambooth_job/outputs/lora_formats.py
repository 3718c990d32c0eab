"""LoRA adapter files that the image-generation tools load.

- `save_lora_diffusers(dir, ...)` writes `<dir>/pytorch_lora_weights.safetensors`, what diffusers'
  LoRA trainers write (`StableDiffusionPipeline.save_lora_weights`, peft key names, the adapters'
  LoraConfig in the header so that alpha != rank survives):

      pipe = StableDiffusionPipeline.from_pretrained(base); pipe.load_lora_weights(dir)

- `save_lora_kohya(path, ...)` writes one file with kohya-ss sd-scripts' keys
  (`lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`; `lora_te_...` for the text
  encoder), the format AUTOMATIC1111 (models/Lora) and ComfyUI (LoraLoader) load, and diffusers too
  (`pipe.load_lora_weights(path)`). For SDXL (`xl=True`) the keys are kohya's SDXL ones: the
  UNet's modules under their original names (`lora_unet_input_blocks_4_1_transformer_blocks_0_
  attn1_to_q`, `lora_unet_middle_block_1_...`, `lora_unet_output_blocks_...`) and `lora_te1_`,
  `lora_te2_` for the two text encoders.

Both take the `--save-precision` dtype ("fp16", "bf16", "fp32" or a torch dtype) and string
metadata for the safetensors header (base model fingerprint, identifier, class noun, steps, ...);
rank and alpha are added from the adapters themselves. Files appear whole or not at all: each is
written next to its final name and renamed into place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from dreambooth_job.outputs.export.single_file import unet_to_ldm
from dreambooth_job.training.lora_adapters import ADAPTER_NAME, has_lora, lora_config

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")
RESERVED_METADATA_KEYS = ("format", "lora_adapter_metadata")
"""Header keys the writers own: safetensors' and diffusers' own."""


def torch_dtype(precision):
    """"fp16"/"bf16"/"fp32" (or a torch dtype) -> the torch dtype."""
    import torch  # deferred: torch is heavy

    if isinstance(precision, torch.dtype):
        return precision
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if precision not in dtypes:
        raise ValueError(f"save precision {precision!r} is not one of {', '.join(SAVE_PRECISIONS)}")
    return dtypes[precision]


def save_lora_diffusers(directory, unet, text_encoder=None, *, dtype="fp32",
                        metadata: Mapping[str, str] | None = None, text_encoder_2=None,
                        xl: bool = False) -> Path:
    """Write the adapters of `unet` (and of `text_encoder`, and SDXL's `text_encoder_2`, when
    they have any) in diffusers' format; `xl`: for an SDXL base (StableDiffusionXLPipeline's
    writer, which knows the second encoder). Returns the file's path."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # deferred: diffusers is heavy
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY  # deferred: diffusers is heavy

    header = _header(metadata, unet)
    dtype = torch_dtype(dtype)
    layers, configs = {}, {}
    for name, module in (("unet", unet), ("text_encoder", text_encoder),
                         ("text_encoder_2", text_encoder_2)):
        if has_lora(module):
            # peft's key names, which diffusers' loaders take as they are (its newer trainers write
            # them too): diffusers' `convert_state_dict_to_diffusers` renames attention keys only
            # (`to_q.lora.down`), and a file mixing both spellings loses the attention adapters.
            layers[name] = _cast(_adapter_state(module), dtype)
            configs.update({f"{name}.{key}": value for key, value in _config_dict(module).items()})
    # diffusers writes its LoraConfig header only with its own save function; ours adds the rest.
    header[LORA_ADAPTER_METADATA_KEY] = json.dumps(configs, indent=2, sort_keys=True)

    def write(tensors, filename):
        _atomic_save_file(tensors, filename, header)

    encoders = {"text_encoder_lora_layers": layers.get("text_encoder")}
    if xl:
        encoders["text_encoder_2_lora_layers"] = layers.get("text_encoder_2")
    writer = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    writer.save_lora_weights(
        directory, unet_lora_layers=layers.get("unet"), **encoders,
        weight_name=DIFFUSERS_WEIGHT_NAME, save_function=write, safe_serialization=True)
    return Path(directory, DIFFUSERS_WEIGHT_NAME)


def save_lora_kohya(path, unet, text_encoder=None, *, dtype="fp32",
                    metadata: Mapping[str, str] | None = None, text_encoder_2=None,
                    xl: bool = False) -> Path:
    """Write the adapters in kohya-ss's key format to the single file `path`; returns it.
    `xl`: for an SDXL base, whose kohya files name the UNet's modules in SDXL's original layout
    (`lora_unet_input_blocks_4_1_...`, kohya trains SDXL on that UNet) and the encoders
    `lora_te1_`/`lora_te2_`; SD 1.x/2.x files keep diffusers' UNet names and say `lora_te_`."""
    header = _header(metadata, unet)
    # What kohya's trainer writes and A1111's UI shows for a LoRA (and filters SDXL ones by).
    config = lora_config(unet)
    header.update({"ss_network_module": "networks.lora", "ss_network_dim": str(config.r),
                   "ss_network_alpha": _number(config.lora_alpha)})
    if xl:
        header["ss_base_model_version"] = "sdxl_base_v1-0"
    kohya = kohya_state_dict(unet, text_encoder, text_encoder_2, xl=xl)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save_file(_cast(kohya, torch_dtype(dtype)), path, header)
    return path


def kohya_state_dict(unet, text_encoder=None, text_encoder_2=None, *, xl: bool = False) -> dict:
    """The adapters' tensors under kohya's keys (`save_lora_kohya`'s file, before the cast), with
    an `.alpha` per adapted module holding that module's LoRA alpha."""
    import torch  # deferred: torch is heavy
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya  # deferred: diffusers is heavy

    modules = {"unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    peft_state = {}
    for name, module in modules.items():
        if has_lora(module):
            state = _adapter_state(module)
            if name == "unet" and xl:
                state = _original_unet_names(state, unet.config)
            peft_state.update({f"{name}.{key}": value for key, value in state.items()})
    owners = {"lora_unet_": unet, "lora_te_": text_encoder, "lora_te1_": text_encoder,
              "lora_te2_": text_encoder_2}
    kohya = {}
    for diffusers_key, tensor in convert_state_dict_to_kohya(peft_state).items():
        key = diffusers_key if xl else _kohya_sd1_name(diffusers_key)
        if key.endswith(".alpha"):
            # diffusers' converter writes alpha = rank; the loaders scale by alpha / rank.
            module = next(m for prefix, m in owners.items() if key.startswith(prefix))
            kohya[key] = torch.tensor(float(lora_config(module).lora_alpha))
        else:
            kohya[key] = tensor
    return kohya


def _original_unet_names(state: dict, unet_config) -> dict:
    """peft's adapter keys with the UNet module paths of SDXL's original checkpoint layout
    (`down_blocks.1.attentions.0.` -> `input_blocks.4.1.`, a ResBlock's `conv1` -> `in_layers.2`):
    the single-file export's mapping, which is diffusers' reader inverted."""
    return unet_to_ldm(state, unet_config)


def _kohya_sd1_name(key: str) -> str:
    # diffusers names the text encoder as SDXL's first (`lora_te1_`); SD 1.x files say `lora_te_`.
    if key.startswith("lora_te1_"):
        return "lora_te_" + key.removeprefix("lora_te1_")
    return key


def _adapter_state(module) -> dict:
    """The adapter's tensors under peft's names (`<module path>.lora_A.weight`). transformers 5.x
    flattened CLIPTextModel (no `text_model.`); the files keep the layout every SD 1.x tool knows
    (`lora_te_text_model_encoder_...`), and diffusers' loader strips it again where it must."""
    from peft.utils import get_peft_model_state_dict  # deferred: peft is heavy

    state = get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME)
    if _is_flattened_clip(module):
        state = {f"text_model.{key}": value for key, value in state.items()}
    return state


def _is_flattened_clip(module) -> bool:
    return type(module).__name__.startswith("CLIPText") and not hasattr(module, "text_model")


def _header(metadata: Mapping[str, str] | None, unet) -> dict[str, str]:
    """The caller's metadata (strings only: the safetensors header holds strings), plus rank and alpha."""
    if not has_lora(unet):
        raise ValueError("the UNet carries no LoRA adapter to save (lora.add_lora adds one)")
    header = {"format": "pt"}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"LoRA file metadata {key!r} must map a string to a string, not {value!r}")
        if key in RESERVED_METADATA_KEYS:
            raise ValueError(f"LoRA file metadata key {key!r} is reserved for the file format")
        header[key] = value
    config = lora_config(unet)
    header.update({"lora_rank": str(config.r), "lora_alpha": _number(config.lora_alpha)})
    return header


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _config_dict(module) -> dict:
    """The adapter's LoraConfig as JSON-able values (diffusers rebuilds the LoraConfig from it)."""
    config = lora_config(module).to_dict()
    return {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}


def _cast(state: Mapping, dtype) -> dict:
    return {key: value.detach().to("cpu", dtype).contiguous() for key, value in state.items()}


def _atomic_save_file(tensors, filename, header: Mapping[str, str]) -> None:
    """safetensors' save_file, written beside `filename` and renamed: a crash leaves no half file."""
    import safetensors.torch  # deferred: safetensors is heavy

    filename = Path(filename)
    partial = filename.with_name(f".{filename.name}.partial")
    try:
        safetensors.torch.save_file(dict(tensors), partial, metadata=dict(header))
        os.replace(partial, filename)
    finally:
        partial.unlink(missing_ok=True)
