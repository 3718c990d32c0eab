"""Phase load_model: the base model (from the hub, a local directory or an S3 prefix, through the
model cache), its noise scheduler, the identifier token and the prompts built from it."""

from __future__ import annotations

import logging

from dreambooth_job import identifiers, models, outputs, sampling
from dreambooth_job.phases.context import RunContext
from dreambooth_job.result import BaseModelInfo, Identifier, Prompts

logger = logging.getLogger("dreambooth_job")


def load(ctx: RunContext) -> None:
    from diffusers import DDPMScheduler

    config = ctx.config
    ctx.base = models.resolve_base_model(config.base_model, config.cache_dir)
    pipeline = models.load_pipeline(ctx.base, config.cache_dir)
    outputs.check_exportable(pipeline, single_file=config.export_single_file)
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


def prompts_for(config, token: str) -> Prompts:
    """The config's prompt templates with the identifier and the class noun filled in."""
    def fill(template: str) -> str:
        return identifiers.format_prompt(template, token, config.class_noun)

    return Prompts(instance=fill(config.instance_prompt), class_prompt=fill(config.class_prompt),
                   validation=[fill(p) for p in config.validation_prompts])



