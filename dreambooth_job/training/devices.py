"""The one place that decides where models run: the first CUDA device when there is one, else the
CPU; and the mixed precision `auto` means there.

Everything asks `pick_device`: training (which hands the choice to accelerate, `cpu=True` without
a GPU, and then trains on accelerate's device), class images, sampling, evaluation, the start-up
capability check and the benchmark, so a job never trains on one device, samples on another and
checks capabilities for a third.
"""

from __future__ import annotations

import contextlib


def pick_device():
    """The `torch.device` this process samples and evaluates on: "cuda" when available, else "cpu"."""
    import torch  # deferred: torch is heavy

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_type() -> str:
    """`pick_device().type`: "cuda" or "cpu"."""
    return pick_device().type


def vae_dtype(weight_dtype, vae_override: bool):
    """The VAE's dtype: the compute dtype, except fp16 without --vae: SDXL's VAE overflows in
    fp16 (NaN latents), so the base model's own VAE stays in fp32 then; an override (the fp16-fix
    VAE) is the user's word that it does not."""
    import torch  # deferred: torch is heavy

    return torch.float32 if weight_dtype == torch.float16 and not vae_override else weight_dtype


def resolve_precision(requested: str, device) -> str:
    """The mixed precision `requested` means on `device`: `auto` is bf16 on CUDA (fp16 before
    Ampere) and none on the CPU."""
    import torch  # deferred: torch is heavy

    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def attention_kernel(backend: str):
    """A context pinning PyTorch's SDPA to the --attention-backend kernel (math, efficient, flash,
    cudnn; the backward pass follows the forward's choice), or doing nothing (auto, eager)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel  # deferred: torch is heavy

    kernel = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}.get(backend)
    return sdpa_kernel(kernel) if kernel is not None else contextlib.nullcontext()
