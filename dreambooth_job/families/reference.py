"""What a family's published architecture weighs, before any model is loaded: the numbers the
sizing profiles (training/sizing.py) and bench are built from. Each family declares one
`ReferenceModel` (`ModelFamily.reference`); tests/unit/test_sizing.py checks the counts against
the architecture built on the meta device (bench.estimate.meta_models)."""

from __future__ import annotations

from dataclasses import dataclass

GB = 10**9


@dataclass(frozen=True)
class ReferenceModel:
    """Parameter counts of a family's published architecture, and what a LoRA run trains at
    rank 16 with adapters on the text encoders too."""

    denoiser: int
    """The denoiser (UNet or transformer): what full fine-tuning trains."""
    text_encoders: int
    vae: int
    lora_adapters_rank16: int
    """The default LoRA targets' adapters at rank 16, on the denoiser and the text encoders."""
    resolution: int
    """The family's native resolution, px."""
    class_images_bytes: int
    """The default 200 class images as PNGs at the family's resolution."""
    step_seconds: int
    """Allowance to finish the step under way when SIGTERM arrives."""

    @property
    def total(self) -> int:
        return self.denoiser + self.text_encoders + self.vae


FLUX1_DEV_DENOISER_LORA_RANK16 = 26_148_864
FLUX1_DEV = ReferenceModel(denoiser=11_901_408_320, text_encoders=123_060_480 + 4_762_310_656,
                           vae=83_819_683, lora_adapters_rank16=FLUX1_DEV_DENOISER_LORA_RANK16 + 1_179_648,
                           resolution=1024, class_images_bytes=int(0.4 * GB), step_seconds=30)
"""FLUX.1 [dev] (non-commercial licence; the user brings the weights), counted on the meta device from
its published configuration (bench/architectures.py "flux1-dev": transformer of 19 double- and 38
single-stream blocks of 24 heads x 128; CLIP ViT-L/14 123 M and T5-XXL v1.1 encoder 4.76 B; the
16-channel VAE 84 M). The default LoRA targets (--lora-targets attention, flux1_lora.py) reach the
double-stream blocks' image and text attention and the single-stream blocks' q, k, v (26.1 M at
rank 16); text-encoder LoRA on CLIP's q, k, v, out (1.2 M). The FLUX.1 family (families/flux1.py)
takes it as its `reference`."""
