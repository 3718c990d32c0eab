"""The VAE's dtype: never fp16 unless --vae names one (SDXL's own VAE overflows in fp16)."""

import torch

from dreambooth_job.training.devices import vae_dtype


def test_the_base_models_vae_never_runs_in_fp16():
    assert vae_dtype(torch.float16, vae_override=False) == torch.float32
    assert vae_dtype(torch.bfloat16, vae_override=False) == torch.bfloat16
    assert vae_dtype(torch.float32, vae_override=False) == torch.float32


def test_an_override_vae_follows_the_compute_dtype():
    assert vae_dtype(torch.float16, vae_override=True) == torch.float16
