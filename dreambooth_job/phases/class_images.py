"""Phase class_images (with --prior-preservation): the class images for the prior-preservation
loss, reused from the shared cache where another run made them, generated (and cached) otherwise."""

from __future__ import annotations

from dreambooth_job.outputs.result import ClassImagesInfo
from dreambooth_job.phases.context import RunContext
from dreambooth_job.training import prior_images
from dreambooth_job.training.devices import pick_device


def wanted(ctx: RunContext) -> bool:
    return ctx.config.prior_preservation


def prepare(ctx: RunContext) -> None:
    config, model = ctx.run_config, ctx.loaded
    model.pipeline.to(pick_device())
    cached = prior_images.prepare_class_images(model.pipeline, config,
                                               model_fingerprint=model.base.fingerprint,
                                               class_prompt=model.prompts.class_prompt)
    ctx.class_images = cached.images
    ctx.observer.class_images(generated=cached.generated, reused=cached.reused)
    ctx.result.class_images = ClassImagesInfo(
        requested=config.num_class_images, generated=cached.generated, reused=cached.reused,
        cache_uri=cached.cache_uri, cache_key=cached.cache_key)
