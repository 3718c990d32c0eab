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
