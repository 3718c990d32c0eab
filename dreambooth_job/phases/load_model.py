"""Phase load_model: the base model (from the hub, a local directory or an S3 prefix, through the
model cache), its noise scheduler, the identifier token and the prompts built from it."""

from __future__ import annotations

import dataclasses
import logging

from dreambooth_job import families
from dreambooth_job.config import subject_identifier as identifiers
from dreambooth_job.generation import sampling
from dreambooth_job.outputs import weight_files as outputs
from dreambooth_job.outputs.result import BaseModelInfo, Identifier, Prompts
from dreambooth_job.phases.context import RunContext
from dreambooth_job.training import base_models as models
from dreambooth_job.training import subject_photos as data

logger = logging.getLogger("dreambooth_job")


def load(ctx: RunContext) -> None:
    from diffusers import DDPMScheduler  # deferred: diffusers is heavy

    config = ctx.config
    ctx.base = models.resolve_base_model(config.base_model, config.cache_dir)
    pipeline = models.load_pipeline(ctx.base, config.cache_dir)
    pipeline, ctx.base = models.with_vae(pipeline, ctx.base, config.vae, config.cache_dir)
    outputs.check_exportable(pipeline, single_file=config.export_single_file)
    config = ctx.config = resolve_resolution(ctx, pipeline)
    ctx.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    ctx.pipeline = sampling.fast_pipeline(pipeline)
    ctx.identifier = identifier = (
        identifiers.choose_identifier(pipeline.tokenizer) if config.identifier == "auto"
        else identifiers.user_identifier(pipeline.tokenizer, config.identifier))
    logger.info("identifier %r (%s, token ids %s)", identifier.token, identifier.chosen,
                identifier.token_ids)
    ctx.prompts = prompts_for(config, identifier.token)
    ctx.result.identifier = Identifier(token=identifier.token, chosen=identifier.chosen,
                                       token_ids=list(identifier.token_ids))
    ctx.result.prompts = ctx.prompts
    ctx.result.base_model = BaseModelInfo(
        source=ctx.base.source, fingerprint=ctx.base.fingerprint,
        prediction_type=ctx.noise_scheduler.config.prediction_type)


def resolve_resolution(ctx: RunContext, pipeline):
    """The config with --resolution auto resolved to the family's native resolution, once: every
    later phase (class images and their cache key, training, samples, evaluation) reads it, and
    result.json records it (`training.resolution`, and in `config` where the run records it)."""
    config = ctx.config
    if config.resolution is None:
        native = families.for_pipeline(pipeline).native_resolution(pipeline)
        config = dataclasses.replace(config, resolution=native)
        logger.info("resolution auto: %d px (the base model's native resolution)", native)
        ctx.result.config["resolution"] = native
        if native != data.AUTO_DECODE_RESOLUTION and ctx.photos is not None:
            # Decoded again at the resolved size: the same pixels as an explicit --resolution.
            ctx.photos = data.load_subject_photos(ctx.work / "photos", config, skipped=ctx.skipped)
    ctx.result.training.resolution = config.resolution
    return config


def prompts_for(config, token: str) -> Prompts:
    """The config's prompt templates with the identifier and the class noun filled in."""
    def fill(template: str) -> str:
        return identifiers.format_prompt(template, token, config.class_noun)

    return Prompts(instance=fill(config.instance_prompt), class_prompt=fill(config.class_prompt),
                   validation=[fill(p) for p in config.validation_prompts])



