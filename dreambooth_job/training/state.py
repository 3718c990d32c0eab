"""What a checkpoint holds of the trained modules: accelerate's `save_state` writes each prepared
model's whole state dict (`model.safetensors`, `model_1.safetensors`, ...). When the train mode
freezes the base (LoRA), only the trainable parameters are written there instead, and read back
into the same modules: a LoRA checkpoint is the adapters, their AdamW moments, the LR scheduler
and the RNG states, not the frozen base (which every run loads from --base-model anyway).

    register_trainable_only(accelerator)     # once, after accelerator.prepare(...)
    accelerator.save_state(directory)        # model.safetensors: the adapters only
    accelerator.load_state(directory)        # adapters into the modules, the rest as usual

A checkpoint lies under the tenant's --output, so its files may be forged even when they match
their manifest: `load_state` below is accelerate's, with what accelerate would take silently (an
RNG file that does not load) or only fail on at the first step (moments of another shape, a
scheduler state of another layout) refused before training, as InvalidInputError.
"""

from __future__ import annotations

import random
from pathlib import Path

from dreambooth_job.exit_codes import InvalidInputError

# Optimizer state entries that hold one value per element of their parameter: AdamW's moments,
# bitsandbytes' 8-bit states (its quantization maps and scales have shapes of their own).
_PER_ELEMENT_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "state1", "state2")


def trainable_state(module) -> dict:
    """The module's trainable parameters under their state-dict names (peft's adapters carry the
    adapter name: `...to_q.lora_A.default.weight`), detached."""
    return {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}


def model_file(directory, index: int) -> Path:
    """Where accelerate's save_state writes the state of its `index`-th prepared model."""
    from accelerate.utils import SAFE_WEIGHTS_NAME  # deferred: accelerate is heavy

    name = SAFE_WEIGHTS_NAME if index == 0 else SAFE_WEIGHTS_NAME.replace(".", f"_{index}.")
    return Path(directory, name)


def load_trainable_state(module, path: Path) -> None:
    """Load what `trainable_state` saved into `module`; a file that holds other parameters than
    the module trains is refused (a checkpoint of other adapters), not loaded halfway."""
    from safetensors.torch import load_file  # deferred: safetensors is heavy

    state = load_file(path)
    expected = trainable_state(module).keys()
    if state.keys() != expected:
        differing = sorted(state.keys() ^ expected)
        raise InvalidInputError(
            f"checkpoint file {path.name} holds other trainable parameters than this run trains "
            f"({len(differing)} differ, e.g. {differing[0]!r})")
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


def load_state(accelerator, directory: Path, optimizer, lr_scheduler) -> None:
    """accelerate's load_state of `directory`, checked: InvalidInputError (the checkpoint is
    unusable, a retry loads the same files) for a file that does not load, an RNG state that does
    not apply, an optimizer or LR scheduler state of another layout than this run's, moments of
    another shape than their parameters."""
    import torch  # deferred: torch is heavy

    layout = _layout(optimizer.state_dict()["param_groups"]), _layout(lr_scheduler.state_dict())
    _apply_rng_states(Path(directory), accelerator.process_index)
    try:
        accelerator.load_state(str(directory))
    except (InvalidInputError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the files verified against the manifest: forged ones
        raise InvalidInputError(f"its state does not load ({_one_line(exc)})") from None
    loaded = _layout(optimizer.state_dict()["param_groups"]), _layout(lr_scheduler.state_dict())
    if _groups_grown(layout[0], loaded[0]) != loaded[0] or loaded[1] != layout[1]:
        raise InvalidInputError("its optimizer or LR scheduler state has another layout than this run's")
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if name in _PER_ELEMENT_STATE and getattr(value, "shape", None) != param.shape:
                    raise InvalidInputError(f"its optimizer state {name!r} has the shape "
                                            f"{tuple(getattr(value, 'shape', ()))}, its parameter "
                                            f"{tuple(param.shape)}")


def _apply_rng_states(directory: Path, process_index: int) -> None:
    """Load and apply the RNG states as accelerate's load_state does, which only logs "Could not
    load random states" when they do not (and goes on with the current ones)."""
    import numpy as np  # deferred: numpy is heavy
    import torch  # deferred: torch is heavy
    from accelerate.utils import RNG_STATE_NAME, load  # deferred: accelerate is heavy

    path = directory / f"{RNG_STATE_NAME}_{process_index}.pkl"
    try:
        states = load(path)
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
    except Exception as exc:  # noqa: BLE001 - whatever a forged file raises
        raise InvalidInputError(f"its RNG state {path.name} does not load ({_one_line(exc)})") from None


def _layout(value):
    """The shape of a state dict: its keys, list lengths and value types (numbers as one type,
    as a saved int may be read back as a float); not its values."""
    if isinstance(value, dict):
        return {key: _layout(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_layout(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return type(value).__name__


def _groups_grown(fresh: list, loaded: list) -> list:
    """A fresh optimizer's param-group layouts with the numbers that `loaded`'s groups add to
    them: an optimizer may record numbers in its groups as it steps (Prodigy's d_hat and d_denom
    appear at its first step); anything else new in them is another layout."""
    if len(fresh) != len(loaded):
        return fresh
    return [{**group, **{key: value for key, value in other.items()
                         if key not in group and value == "number"}}
            if isinstance(group, dict) and isinstance(other, dict) else group
            for group, other in zip(fresh, loaded)]


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
