"""What a checkpoint holds of the trained modules: accelerate's `save_state` writes each prepared
model's whole state dict (`model.safetensors`, `model_1.safetensors`, ...). When the train mode
freezes the base (LoRA), only the trainable parameters are written there instead, and read back
into the same modules: a LoRA checkpoint is the adapters, their AdamW moments, the LR scheduler
and the RNG states, not the frozen base (which every run loads from --base-model anyway).

    register_trainable_only(accelerator)     # once, after accelerator.prepare(...)
    accelerator.save_state(directory)        # model.safetensors: the adapters only
    accelerator.load_state(directory)        # adapters into the modules, the rest as usual
"""

from __future__ import annotations

from pathlib import Path

from dreambooth_job.exit_codes import InvalidInputError


def trainable_state(module) -> dict:
    """The module's trainable parameters under their state-dict names (peft's adapters carry the
    adapter name: `...to_q.lora_A.default.weight`), detached."""
    return {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}


def model_file(directory, index: int) -> Path:
    """Where accelerate's save_state writes the state of its `index`-th prepared model."""
    from accelerate.utils import SAFE_WEIGHTS_NAME

    name = SAFE_WEIGHTS_NAME if index == 0 else SAFE_WEIGHTS_NAME.replace(".", f"_{index}.")
    return Path(directory, name)


def load_trainable_state(module, path: Path) -> None:
    """Load what `trainable_state` saved into `module`; a file that holds other parameters than
    the module trains is refused (a checkpoint of other adapters), not loaded halfway."""
    from safetensors.torch import load_file

    state = load_file(path)
    expected = trainable_state(module).keys()
    if state.keys() != expected:
        differing = sorted(state.keys() ^ expected)
        raise InvalidInputError(
            f"checkpoint file {path.name} holds other trainable parameters than this run trains "
            f"({len(differing)} differ, e.g. {differing[0]!r}); pass --restart to discard it")
    module.load_state_dict(state, strict=False)


def register_trainable_only(accelerator) -> None:
    """Make `accelerator`'s save_state/load_state write and read only the prepared models'
    trainable parameters (accelerate's own hooks, as diffusers' LoRA trainers use them)."""

    def save(models, weights, output_dir) -> None:
        for index, model in enumerate(models):
            weights[index] = trainable_state(model)

    def load(models, input_dir) -> None:
        for index, model in enumerate(models):
            load_trainable_state(model, model_file(input_dir, index))
        models.clear()  # loaded: accelerate's strict load of whole state dicts would refuse them

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)
