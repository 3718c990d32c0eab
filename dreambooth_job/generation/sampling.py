"""Image generation shared by class images, validation grids and evaluation: the family's fast
sampler (`ModelFamily.sampling_scheduler`), batched, with one seed per image so any image can be
regenerated alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from dreambooth_job import families
from dreambooth_job.redaction import redact
from dreambooth_job.training.devices import resolve_precision

LABEL_WIDTH = 256


def sampler_name(pipeline) -> str:
    """The scheduler class `fast_pipeline` samples with (class-image cache keys and evaluation
    protocols record it)."""
    return families.for_pipeline(pipeline).sampler_name()


def fast_pipeline(pipeline):
    """The pipeline with its family's default sampler and no progress bars."""
    pipeline.scheduler = families.for_pipeline(pipeline).sampling_scheduler(pipeline)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate_images(pipeline, prompts: Sequence[str], seeds: Sequence[int], *, resolution: int,
                    num_inference_steps: int, guidance_scale: float,
                    batch_size: int) -> list[Image.Image]:
    """One image per (prompt, seed) pair, generated `batch_size` at a time by the pipeline's family."""
    import torch  # deferred: torch is heavy

    family = families.for_pipeline(pipeline)
    assert len(prompts) == len(seeds)
    device = pipeline.device
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        batch_prompts = list(prompts[start:start + batch_size])
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        # Latents drawn on the CPU per seed: the same seed gives the same image on any device.
        latents = torch.stack([family.initial_noise(pipeline, resolution, g) for g in generators])
        with torch.inference_mode(), _half_precision(device):
            images.extend(family.generate(
                pipeline, batch_prompts, latents=latents.to(device, family.sampling_dtype(pipeline)),
                resolution=resolution, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale))
    return images


def _half_precision(device):
    """On CUDA, sample under the half precision `auto` trains in (bf16, fp16 before Ampere),
    whatever the weights' dtypes: class images twice as fast as fp32, and a denoiser trained in fp32
    samples beside a VAE kept in bf16."""
    import torch  # deferred: torch is heavy

    if device.type != "cuda":
        return contextlib.nullcontext()
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision("auto", device)]
    return torch.autocast("cuda", dtype=half)


def image_grid(rows: Sequence[Sequence[Image.Image]], labels: Sequence[str]) -> Image.Image:
    """Rows of equal-size images with each row's prompt written in a margin on the left, redacted
    as every text the job publishes (the grids are on the run page)."""
    cell_w, cell_h = rows[0][0].size
    columns = max(len(r) for r in rows)
    grid = Image.new("RGB", (LABEL_WIDTH + columns * cell_w, len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for r, (row, label) in enumerate(zip(rows, labels)):
        for c, image in enumerate(row):
            grid.paste(image, (LABEL_WIDTH + c * cell_w, r * cell_h))
        draw.multiline_text((6, r * cell_h + 6), _wrap(redact(label), 36), fill="black", font=font)
    return grid


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def validation_grid(pipeline, prompts: Sequence[str], num_images: int, *, seed: int, resolution: int,
                    num_inference_steps: int, guidance_scale: float, batch_size: int) -> Image.Image:
    """The sample grid: rows = prompts, columns = seeds; the same seeds at every call."""
    seeds = [seed + c for c in range(num_images)]
    flat_prompts = [p for p in prompts for _ in seeds]
    images = generate_images(pipeline, flat_prompts, seeds * len(prompts), resolution=resolution,
                             num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, batch_size=batch_size)
    rows = [images[i * num_images:(i + 1) * num_images] for i in range(len(prompts))]
    return image_grid(rows, prompts)
