"""Print docs/user-guide.md's tables of ESTIMATED peak training memory (the model of
dreambooth_job/training/memory_estimate.py, architectures built on the meta device: nothing is
trained or measured). The second table, the flow-matching transformers' (also in
docs/benchmarks.md), gives each mode's leanest run (training/memory_fit.py: gradient checkpointing,
cached latents and embeddings, text encoders off the GPU) and whether it fits an A100 40 GB and
80 GB; tests/docs/test_memory_table.py checks that both documents hold what this prints.

    PYTHONPATH=$PWD .venv/bin/python scripts/memory_table.py
"""

from __future__ import annotations

import dataclasses

from dreambooth_job.bench.estimate import VAE_SCALE, estimate, meta_models
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.training import lora_adapters, memory_fit
from dreambooth_job.training.memory_estimate import GIB

UNET_MODELS = ("sd15", "sdxl")
FLOW_MODELS = ("flux2-klein-4b", "flux2-klein-9b", "flux1-dev")
A100_GIB = (40, 80)


def unet_rows() -> list[str]:
    lines = ["| model | resolution | mode | checkpointing off | checkpointing on | on + 8-bit Adam |",
             "|---|---|---|---|---|---|"]
    for model in UNET_MODELS:
        built = meta_models(model)
        for mode in ("full", "lora"):
            cells = [estimate(model, train_mode=mode, checkpointing=ckpt, use_8bit_adam=adam,
                              built=built)
                     for ckpt, adam in ((False, False), (True, False), (True, True))]
            lines.append(f"| {model} | {cells[0].resolution} px | {mode} | "
                         + " | ".join(f"{c.peak_bytes / GIB:.1f} GiB" for c in cells) + " |")
    return lines


def _counts(built) -> memory_fit.ModelCounts:
    """The architecture's parameters and its LoRA adapters at the default rank and targets (the
    denoiser's; the text encoders' are counted but they train only with --train-text-encoder)."""
    defaults = TrainConfig()
    modules = dict(built.modules)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    return memory_fit.ModelCounts(
        denoiser=counts.pop("denoiser"), vae=counts.pop("vae"), text_encoders=sum(counts.values()),
        denoiser_adapters=lora_adapters.lora_parameter_count(
            modules["denoiser"], defaults.lora_rank, defaults.lora_target_modules))


def _fits(counts, run, levels, family) -> list[str]:
    cells = []
    for gib in A100_GIB:
        if memory_fit.refusal(counts, run, levels, family, gib * GIB, "") is None:
            cells.append("yes")
        elif memory_fit.refusal(counts, dataclasses.replace(run, optimizer="adamw-8bit"),
                                levels, family, gib * GIB, "") is None:
            cells.append("with 8-bit Adam")
        else:
            cells.append("no")
    return cells


def flow_rows() -> list[str]:
    lines = ["| model | resolution | mode | leanest estimate | + 8-bit Adam | A100 40 GB | A100 80 GB |",
             "|---|---|---|---|---|---|---|"]
    for model in FLOW_MODELS:
        built = meta_models(model)
        counts, family = _counts(built), built.family
        config = built.modules["denoiser"].config
        for mode in ("lora", "full"):
            for resolution in (512, 1024):
                levels = family.activation_levels(config, resolution // VAE_SCALE)
                run = memory_fit.RunShape(lora=mode == "lora", train_text_encoder=False,
                                          optimizer="adamw", images_per_step=2)
                peaks = [memory_fit.leanest_peak_bytes(
                    counts, dataclasses.replace(run, optimizer=optimizer), levels, family)
                    for optimizer in ("adamw", "adamw-8bit")]
                lines.append(f"| {model} | {resolution} px | {mode} | "
                             + " | ".join(f"{p / GIB:.1f} GiB" for p in peaks) + " | "
                             + " | ".join(_fits(counts, run, levels, family)) + " |")
    return lines


def main() -> None:
    print("\n".join(unet_rows()))
    print()
    print("\n".join(flow_rows()))


if __name__ == "__main__":
    main()
