"""Validation grids (during training with --sample-every, and phase sample at the end), each
uploaded at once so grids from before a preemption survive it; phase sample also writes the
published weight files (outputs/weight_files.py) into the work directory for the upload."""

from __future__ import annotations

from dreambooth_job.generation import sampling
from dreambooth_job.phases.context import RunContext
from dreambooth_job.phases.trained_model import save_outputs
from dreambooth_job.storage import places as storage


def grid(ctx: RunContext, step: int) -> None:
    from dreambooth_job.phases.trained_model import inference_pipeline  # deferred: trained_model imports PIL

    config, model = ctx.run_config, ctx.loaded
    image = sampling.validation_grid(
        inference_pipeline(ctx), model.prompts.validation, config.num_validation_images,
        seed=config.seed, resolution=model.resolution, num_inference_steps=config.sample_steps,
        guidance_scale=config.guidance_scale, batch_size=config.sample_batch_size)
    path = ctx.work / "samples" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    storage.upload_file(path, storage.join(config.output, "samples", path.name))


def final(ctx: RunContext) -> None:
    grid(ctx, ctx.steps_done)
    save_outputs(ctx, ctx.work / "output")
