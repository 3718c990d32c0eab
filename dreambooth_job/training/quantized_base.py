"""A quantized frozen base for LoRA (--base-precision fp8 | nf4): the denoiser's linear layers hold
8-bit float or 4-bit NormalFloat weights, the adapters train in fp32 on top of them.

    problem = missing_capability("nf4", "cuda")   # None, or the one line preflight.py refuses with
    quantize(denoiser, "nf4", dtype=torch.bfloat16, device=torch.device("cuda"))
    lora_adapters.add_lora(denoiser, ...)          # peft wraps the quantized layers

- fp8: torchao's `Float8WeightOnlyConfig` (float8 e4m3 weights with a scale per row, dequantized
  to the compute dtype in each matmul): a byte a weight, half of bf16's. Not diffusers' klein
  trainer's --do_fp8_training, which is torchao's float8 *compute* (`convert_to_float8_training`)
  on weights that stay bf16: faster on Hopper, but no smaller. Weight-only is what fits a base
  into less memory, and it needs no float8 matmul (the unit tests run it on the CPU).
- nf4: bitsandbytes' `Linear4bit` with NF4 weights (Dettmers et al. 2023, QLoRA), computing in the
  compute dtype: about half a byte a weight (4 bits and a 32-bit scale per 64), as diffusers'
  train_dreambooth_lora_flux2_klein.py loads its base with a `BitsAndBytesConfig` of
  `load_in_4bit`, `bnb_4bit_quant_type="nf4"`.

Only linear layers whose both sides are multiples of 16 are quantized (the float8 kernels' and
the 4-bit blocks' alignment, diffusers' klein trainer skips the others too); norms, embeddings and
the rest stay in the compute dtype. Both libraries are optional extras (`quant`, `bnb`) and run
here on CUDA only: preflight.py refuses the option elsewhere before anything is downloaded.
"""

from __future__ import annotations

import importlib.util
import logging

from dreambooth_job.config.choices import QUANTIZED_BASE_PRECISIONS

log = logging.getLogger("dreambooth_job")

LIBRARIES = {"fp8": ("torchao", "quant"), "nf4": ("bitsandbytes", "bnb")}
"""The module each precision imports, and the package extra that installs it."""
ALIGNMENT = 16


def is_quantized(precision: str) -> bool:
    return precision in QUANTIZED_BASE_PRECISIONS


def missing_capability(precision: str, device_type: str) -> str | None:
    """Why --base-precision `precision` cannot run on `device_type` here (one line), or None.
    CUDA first: on a CPU machine installing the library would not help."""
    if not is_quantized(precision):
        return None
    if device_type != "cuda":
        return (f"--base-precision {precision} needs a CUDA GPU and this machine has none: "
                "use --base-precision auto or request a GPU")
    module, extra = LIBRARIES[precision]
    if importlib.util.find_spec(module) is None:
        return (f"--base-precision {precision} needs {module}, which is not installed "
                f"(pip install 'dreambooth-job[{extra}]')")
    return None


def quantizable_layers(module) -> list[str]:
    """Dotted names of the plain linear layers of `module` with both sides a multiple of 16."""
    import torch  # deferred: torch is heavy

    return [name for name, layer in module.named_modules()
            if type(layer) is torch.nn.Linear
            and layer.in_features % ALIGNMENT == 0 and layer.out_features % ALIGNMENT == 0]


def quantize(denoiser, precision: str, *, dtype, device) -> int:
    """Put the frozen `denoiser` on `device` in `dtype` with its quantizable linear layers in
    `precision` ("fp8" or "nf4"), in place, before adapters are added; the number of layers
    quantized. The cast happens on the CPU first, so the device never holds fp32 weights."""
    denoiser.requires_grad_(False)
    denoiser.to(dtype)
    names = quantizable_layers(denoiser)
    if precision == "nf4":
        _replace_with_nf4(denoiser, names, dtype)
        denoiser.to(device)  # bitsandbytes quantizes each weight as it moves
    elif precision == "fp8":
        from torchao.quantization import Float8WeightOnlyConfig, quantize_  # deferred: optional extra

        wanted = set(names)
        quantize_(denoiser, Float8WeightOnlyConfig(), filter_fn=lambda _, name: name in wanted,
                  device=device)
        denoiser.to(device)  # what quantize_ left alone: norms, embeddings, unaligned layers
    else:
        raise ValueError(f"not a quantized precision: {precision!r}")
    log.info("frozen base in %s: %d linear layers quantized, the rest in %s", precision, len(names),
             str(dtype).removeprefix("torch."))
    return len(names)


def _replace_with_nf4(module, names: list[str], dtype) -> None:
    """Each named linear layer swapped for a bitsandbytes Linear4bit holding its weights (NF4 once
    moved to a device) and computing in `dtype`; built on the meta device, so that no random
    initial weights are drawn for billions of parameters only to be replaced."""
    import bitsandbytes as bnb  # deferred: an optional dependency

    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        linear = getattr(parent, child_name)
        quantized = bnb.nn.Linear4bit(linear.in_features, linear.out_features,
                                      bias=linear.bias is not None, compute_dtype=dtype,
                                      quant_type="nf4", device="meta")
        quantized.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False,
                                             quant_type="nf4")
        if linear.bias is not None:
            quantized.bias = linear.bias
        setattr(parent, child_name, quantized)
