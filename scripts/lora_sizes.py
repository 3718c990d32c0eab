"""Per-subject output and checkpoint sizes, full fine-tuning vs LoRA, for a real architecture.

    .venv/bin/python scripts/lora_sizes.py --model sd15 --rank 16

The pipeline is built from its published configuration (bench_models.py) on the meta device: only
shapes, no weights, so sd15 costs no 4 GB of RAM. Sizes are tensor bytes; a safetensors header
adds a few kB. Checkpoints count AdamW's two fp32 moments per trained parameter besides the fp32
trained weights (what a resumable checkpoint must hold).
"""

from __future__ import annotations

import argparse

from dreambooth_job.bench import architectures
from dreambooth_job.bench.estimate import parameter_counts
from dreambooth_job.training import lora_adapters

MB = 1e6


def sizes(model: str, rank: int) -> dict[str, float]:
    from accelerate import init_empty_weights

    with init_empty_weights():
        pipe = architectures.build_pipeline(model)
    counts = parameter_counts(pipe)
    unet_attention = lora_adapters.lora_parameter_count(pipe.unet, rank, lora_adapters.DEFAULT_UNET_TARGETS)
    unet_conv = lora_adapters.lora_parameter_count(pipe.unet, rank, lora_adapters.UNET_CONV_TARGETS)
    text = lora_adapters.lora_parameter_count(pipe.text_encoder, rank,
                                              lora_adapters.DEFAULT_TEXT_ENCODER_TARGETS)
    return {
        "full pipeline, fp16 (UNet + text encoder + VAE)": sum(counts.values()) * 2 / MB,
        "full pipeline, fp32": sum(counts.values()) * 4 / MB,
        "full checkpoint (UNet fp32 + AdamW moments)": counts["denoiser"] * 12 / MB,
        "full checkpoint with text encoder": (counts["denoiser"] + counts["text_encoders"]) * 12 / MB,
        f"LoRA r{rank} UNet attention, fp16": unet_attention * 2 / MB,
        f"LoRA r{rank} UNet attention, fp32": unet_attention * 4 / MB,
        f"LoRA r{rank} UNet attention + text encoder, fp16": (unet_attention + text) * 2 / MB,
        f"LoRA r{rank} UNet attention + ResNet convs, fp16": (unet_attention + unet_conv) * 2 / MB,
        f"LoRA r{rank} checkpoint, UNet attention (adapter + AdamW)": unet_attention * 12 / MB,
        f"LoRA r{rank} checkpoint, UNet attention + text encoder": (unet_attention + text) * 12 / MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15", choices=("sd15", "sd21"))
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    for name, megabytes in sizes(args.model, args.rank).items():
        print(f"{name:62s} {megabytes:10.1f} MB")


if __name__ == "__main__":
    main()
