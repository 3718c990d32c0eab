"""LoRA adapter files that the image-generation tools load, in the formats of the model's family
(`ModelFamily.lora_format`, families/lora_formats.py). `modules` is the family's
`lora_format.modules(pipeline)`: {component: module}, the denoiser first.

- `save_lora_diffusers(dir, family, modules, ...)` writes `<dir>/pytorch_lora_weights.safetensors`,
  what diffusers' LoRA trainers write (the family's pipeline class's `save_lora_weights`, peft key
  names, the adapters' LoraConfig in the header so that alpha != rank survives):

      pipe = DiffusionPipeline.from_pretrained(base); pipe.load_lora_weights(dir)

- `save_lora_kohya(path, family, modules, ...)` writes one file with kohya-ss sd-scripts' keys
  (`lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`; `lora_te_...` for the text
  encoder), the format AUTOMATIC1111 (models/Lora) and ComfyUI (LoraLoader) load, and diffusers too
  (`pipe.load_lora_weights(path)`); the family names the keys (`LoraFormat.kohya_state`).
  --lora-variant dora adds LyCORIS's `<module>.dora_scale` (peft's magnitude, one per output row,
  shaped (out, 1[, 1, 1]): LyCORIS's wd_on_out layout, which ComfyUI reads); lokr writes
  LyCORIS's `<module>.lokr_w1`, `.lokr_w2` (or `.lokr_w2_a`/`.lokr_w2_b`) and `.alpha`.

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
from typing import Any

from dreambooth_job.training.lora_adapters import (
    ADAPTER_NAME,
    adapter_alpha,
    adapter_variant,
    has_lora,
    lora_config,
)

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


def save_lora_diffusers(directory, family, modules: Mapping[str, Any], *, dtype="fp32",
                        metadata: Mapping[str, str] | None = None) -> Path:
    """Write the adapters of `modules` (those that have any; the first, the denoiser, must) in
    diffusers' format, with `family`'s writer (a ModelFamily). Returns the file's path."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY  # deferred: diffusers is heavy

    header = _header(metadata, _denoiser(modules))
    dtype = torch_dtype(dtype)
    layers, configs = {}, {}
    for name, module in modules.items():
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

    family.lora_format.write_diffusers(directory, layers, weight_name=DIFFUSERS_WEIGHT_NAME,
                                       save_function=write)
    return Path(directory, DIFFUSERS_WEIGHT_NAME)


def save_lora_kohya(path, family, modules: Mapping[str, Any], *, dtype="fp32",
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write the adapters in kohya-ss's key format, as `family` names them, to the single file
    `path`; returns it."""
    denoiser = _denoiser(modules)
    header = _header(metadata, denoiser)
    # What kohya's trainer writes and A1111's UI shows for a LoRA (and filters families by).
    config = lora_config(denoiser)
    header.update({"ss_network_module": "networks.lora", "ss_network_dim": str(config.r),
                   "ss_network_alpha": _number(adapter_alpha(config)), **family.lora_format.kohya_header})
    variant = adapter_variant(config)
    if variant != "lora":  # what LyCORIS's kohya network writes for its algorithms
        args = {"algo": "lokr"} if variant == "lokr" else {"algo": "lora", "dora_wd": "True"}
        header.update({"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(args)})
    kohya = kohya_state_dict(family, modules)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save_file(_cast(kohya, torch_dtype(dtype)), path, header)
    return path


def kohya_state_dict(family, modules: Mapping[str, Any]) -> dict:
    """The adapters' tensors under kohya's keys (`save_lora_kohya`'s file, before the cast), with
    an `.alpha` per adapted module holding that module's LoRA alpha."""
    import torch  # deferred: torch is heavy; the CLI starts without it

    adapters = {name: _adapter_state(module) for name, module in modules.items() if has_lora(module)}
    kohya = {}
    for name, converted in family.lora_format.kohya_state(adapters, modules).items():
        config = lora_config(modules[name])
        # diffusers' converter writes alpha = rank; the loaders scale by alpha / rank.
        alpha = adapter_alpha(config)
        state = {key: torch.tensor(alpha) if key.endswith(".alpha") else tensor
                 for key, tensor in converted.items()}
        kohya.update(_lycoris_tensors(state, alpha=alpha, rank=config.r))
    return kohya


def _lycoris_tensors(state: dict, *, alpha: float, rank: int) -> dict:
    """peft's DoRA and LoKr tensors (under their modules' kohya names) as LyCORIS writes them."""
    import torch  # deferred: torch is heavy

    out = {}
    for key, tensor in state.items():
        module, _, suffix = key.rpartition(".")
        if suffix == "lora_magnitude_vector":
            # One magnitude per output row, shaped to broadcast over the weight (out, 1[, 1, 1]).
            weight_dims = state[f"{module}.lora_down.weight"].dim()
            out[f"{module}.dora_scale"] = tensor.reshape(-1).reshape(-1, *[1] * (weight_dims - 1))
        elif suffix == "lokr_w1" and not any(f"{module}.lokr_{f}_a" in state for f in ("w1", "w2")):
            # Both factors whole: ComfyUI and LyCORIS apply kron(w1, w2) unscaled, peft scales
            # it by alpha / rank; the scale goes into w1, and alpha = rank says "scale 1".
            out[key] = tensor * (alpha / rank)
            out[f"{module}.alpha"] = torch.tensor(float(rank))
        elif suffix == "lokr_w2_b":
            # A low-rank factor: the loaders scale by alpha / (its rank), as peft does.
            out[key] = tensor
            out[f"{module}.alpha"] = torch.tensor(alpha)
        else:
            out[key] = tensor
    return out


def _denoiser(modules: Mapping[str, Any]):
    return next(iter(modules.values()))


def _adapter_state(module) -> dict:
    """The adapter's tensors under peft's names (`<module path>.lora_A.weight`). transformers 5.x
    flattened CLIPTextModel (no `text_model.`); the files keep the layout every SD 1.x tool knows
    (`lora_te_text_model_encoder_...`), and diffusers' loader strips it again where it must."""
    from peft.utils import get_peft_model_state_dict  # deferred: peft is heavy

    state = get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME)
    return {file_layer_path(module, key): value for key, value in state.items()}


def file_layer_path(module, path: str) -> str:
    """A layer's (or tensor's) path in `module` as the files name it: under `text_model.` in a
    flattened CLIP text encoder."""
    return f"text_model.{path}" if _is_flattened_clip(module) else path


def _is_flattened_clip(module) -> bool:
    return type(module).__name__.startswith("CLIPText") and not hasattr(module, "text_model")


def _header(metadata: Mapping[str, str] | None, denoiser) -> dict[str, str]:
    """The caller's metadata (strings only: the safetensors header holds strings), plus rank and alpha."""
    if not has_lora(denoiser):
        raise ValueError("the denoiser carries no LoRA adapter to save (lora_adapters.add_lora adds one)")
    header = {"format": "pt"}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"LoRA file metadata {key!r} must map a string to a string, not {value!r}")
        if key in RESERVED_METADATA_KEYS:
            raise ValueError(f"LoRA file metadata key {key!r} is reserved for the file format")
        header[key] = value
    config = lora_config(denoiser)
    header.update({"lora_rank": str(config.r), "lora_alpha": _number(adapter_alpha(config))})
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
