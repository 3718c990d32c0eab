"""Saved-weight precision (`fp16`, `bf16`, `fp32`): training keeps fp32 master weights, and only the
saved copy is cast, so a fp16 file holds exactly the fp32 weights cast to fp16."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dreambooth_job.exit_codes import InvalidInputError

PRECISIONS = ("fp16", "bf16", "fp32")


def torch_dtype(precision: str):
    """The torch dtype a precision name stands for."""
    import torch  # deferred: torch is heavy

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if precision not in dtypes:
        raise InvalidInputError(f"save precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return dtypes[precision]


def cast_state_dict(state_dict: dict, precision) -> dict:
    """A copy of `state_dict` with every floating-point tensor cast to `precision` (a name or a
    torch dtype), detached and contiguous as safetensors wants; integer buffers stay as they are."""
    dtype = torch_dtype(precision) if isinstance(precision, str) else precision
    return {key: (tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()).contiguous()
            for key, tensor in state_dict.items()}


def save_pretrained_precision(pipeline, directory: str | os.PathLike, precision: str) -> None:
    """`pipeline.save_pretrained(directory)` with every weight file in `precision`; the pipeline in
    memory is left untouched (casting it and back would round its fp32 weights).

    The fp32 files are written first and then cast file by file, so the peak extra memory is one
    component's weights rather than a second copy of the whole pipeline.
    """
    dtype = torch_dtype(precision)
    pipeline.save_pretrained(directory, safe_serialization=True)
    if precision == "fp32":
        return
    for weights in sorted(Path(directory).rglob("*.safetensors")):
        _cast_file(weights, dtype)
        _record_dtype(weights.parent / "config.json", dtype)


def _cast_file(path: Path, dtype) -> None:
    from safetensors import safe_open  # deferred: safetensors is heavy
    from safetensors.torch import save_file  # deferred: safetensors is heavy

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        names = f.keys()
        tensors = {key: f.get_tensor(key) for key in names}
    write_atomically(path, lambda partial: save_file(cast_state_dict(tensors, dtype), partial,
                                                     metadata=metadata))


def write_atomically(path: str | os.PathLike, write) -> None:
    """`write(<path>.partial)`, then rename it to `path`: never a half-written weight file under the
    final name, and no leftover `.partial` when writing fails."""
    partial = f"{os.fspath(path)}.partial"
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _record_dtype(config_path: Path, dtype) -> None:
    """transformers' configs record the weights' dtype (`dtype`, formerly `torch_dtype`): keep it true,
    so `from_pretrained(torch_dtype="auto")` loads the saved precision. diffusers' configs have none."""
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    keys = [key for key in ("dtype", "torch_dtype") if key in config]
    if not keys:
        return
    for key in keys:
        config[key] = str(dtype).removeprefix("torch.")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
