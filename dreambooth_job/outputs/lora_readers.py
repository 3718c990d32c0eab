"""A run's LyCORIS LoKr file read back onto a pipeline: what `generate` draws a --lora-variant
lokr run with, since diffusers' SD/SDXL loaders do not read LoKr and such a run publishes no
diffusers file (outputs/weight_files.py).

    apply_lokr_file(pipeline, Path("lora/dog-1.safetensors"))   # the pipeline now carries the run

The inverse of lora_writers.save_lora_kohya for LoKr: each `<kohya module>.lokr_*` goes back to the
layer the family names so (LoraFormat.kohya_module_names), on peft's LoKr adapters of the run's
rank and alpha (the file's header) built as training built them (lora_adapters.add_lora), so
the model computes what the trained one did. Where both factors are whole the writer folded
alpha/rank into w1 (LyCORIS scales nothing there); that scale is taken out again. A file that does
not fit (another adapter kind, a layer the base model lacks, a bad rank) is exit 2 naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreambooth_job import families
from dreambooth_job.config.choices import MAX_LORA_ALPHA, MAX_LORA_RANK
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.outputs.lora_writers import file_layer_path
from dreambooth_job.training import lora_adapters

LOKR_TENSORS = ("lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
"""What our LoKr adapters hold (w1 whole: LoKrConfig's decompose_both is off), and `.alpha`."""


def is_lokr_file(path: Path) -> bool:
    """Whether the safetensors file at `path` holds LoKr factors."""
    import safetensors  # deferred: safetensors is heavy

    with safetensors.safe_open(str(path), "pt") as handle:
        names = handle.keys()  # a safe_open handle is not iterable
        return any(".lokr_" in key for key in names)


def apply_lokr_file(pipeline, path: Path) -> None:
    """Put the LoKr adapters of the LyCORIS file at `path` onto `pipeline`'s denoiser and text
    encoders, as training had them."""
    import safetensors  # deferred: safetensors is heavy

    with safetensors.safe_open(str(path), "pt") as handle:
        header = handle.metadata() or {}
        by_module: dict[str, dict[str, Any]] = {}
        names = handle.keys()
        for key in names:
            module, _, suffix = key.rpartition(".")
            by_module.setdefault(module, {})[suffix] = handle.get_tensor(key)
    rank, alpha = _rank_and_alpha(header, path)
    family = families.for_pipeline(pipeline)
    modules = family.lora_format.modules(pipeline)
    denoiser = next(iter(modules))
    for name, module in modules.items():
        if module is None:
            continue
        paths = {file_layer_path(module, layer_path): layer_path
                 for layer_path, layer in module.named_modules() if lora_adapters.adaptable(layer)}
        names = family.lora_format.kohya_module_names(name, list(paths), modules)
        found = {paths[names[kohya]]: by_module.pop(kohya) for kohya in list(by_module) if kohya in names}
        if found:
            _adapt(module, name == denoiser, found, rank, alpha, path)
    if by_module:
        raise InvalidInputError(f"{path.name}: adapts {len(by_module)} layer(s) the base model does "
                                f"not have, e.g. {sorted(by_module)[0][:120]}")


def _rank_and_alpha(header: dict[str, str], path: Path) -> tuple[int, float]:
    """The run's --lora-rank and --lora-alpha, from the header our writer fills (lora_writers._header)."""
    try:
        rank, alpha = int(header["lora_rank"]), float(header["lora_alpha"])
    except (KeyError, ValueError):
        raise InvalidInputError(f"{path.name}: its header states no lora_rank and lora_alpha") from None
    if not (1 <= rank <= MAX_LORA_RANK and 0 < alpha <= MAX_LORA_ALPHA):
        raise InvalidInputError(f"{path.name}: its header's lora_rank {rank} or lora_alpha {alpha} "
                                "is out of bounds")
    return rank, alpha


def _adapt(module, is_denoiser: bool, found: dict[str, dict], rank: int, alpha: float, path: Path) -> None:
    """LoKr adapters on `module`'s layers in `found` ({layer path: {tensor name: tensor}}),
    holding those tensors."""
    from peft import set_peft_model_state_dict  # deferred: peft is heavy

    targets = {"target_modules" if is_denoiser else "text_encoder_targets": list(found)}
    lora_adapters.add_lora(module if is_denoiser else None, None if is_denoiser else module,
                           rank=rank, alpha=alpha, variant="lokr", **targets)
    state = {}
    for layer, stored in found.items():
        tensors = {suffix: t for suffix, t in stored.items() if suffix != "alpha"}
        if not set(tensors) <= set(LOKR_TENSORS) or "lokr_w1" not in tensors:
            raise InvalidInputError(f"{path.name}: {layer} holds {', '.join(sorted(tensors))}, "
                                    "not the LoKr factors of a --lora-variant lokr run")
        if "lokr_w2" in tensors:  # both whole: the writer's alpha/rank is in w1
            tensors["lokr_w1"] = tensors["lokr_w1"].float() * (rank / alpha)
        state.update({f"{layer}.{suffix}": t for suffix, t in tensors.items()})
    try:
        loaded = set_peft_model_state_dict(module, state, adapter_name=lora_adapters.ADAPTER_NAME)
    except RuntimeError as exc:  # a factor of another shape than the rank's adapter holds
        raise InvalidInputError(f"{path.name}: its LoKr factors do not fit rank {rank} adapters "
                                f"of the base model: {str(exc).splitlines()[0][:160]}") from None
    missing = [key for key in loaded.missing_keys if ".lokr_" in key]
    if loaded.unexpected_keys or missing:
        raise InvalidInputError(f"{path.name}: its LoKr factors do not fit rank {rank} adapters "
                                f"of the base model ({(loaded.unexpected_keys or missing)[0][:120]})")
