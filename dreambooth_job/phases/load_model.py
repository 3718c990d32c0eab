"""Phase load_model: the base model (from the hub, a local directory or an S3 prefix, through the
model cache), its family's training objective, --resolution, --guidance-scale and
--save-precision auto resolved, the identifier token and the prompts built from it: the run's
`LoadedModel` (context.py), recorded in result.json; the photos' captions are filled in here
(training/captions.py: the identifier is known now)."""

from __future__ import annotations

import logging

from dreambooth_job import families
from dreambooth_job.config import subject_identifier
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.families.objective import ObjectiveOptions
from dreambooth_job.generation import sampling
from dreambooth_job.outputs import weight_files
from dreambooth_job.outputs.result import BaseModelInfo, Identifier, Prompts
from dreambooth_job.phases.context import LoadedModel, RunContext
from dreambooth_job.training import base_models, buckets, captions, memory_fit, model_card, subject_photos

logger = logging.getLogger("dreambooth_job")


def load(ctx: RunContext) -> None:
    config = ctx.config
    device_bytes = memory_fit.device_memory()  # None on the CPU: nothing is refused there
    memory_fit.check_before_download(config, device_bytes)  # from the configs, before the weights
    base = base_models.resolve_base_model(config.base_model, config.cache_dir)
    pipeline = base_models.load_pipeline(base, config.cache_dir)
    pipeline, base = base_models.with_vae(pipeline, base, config.vae, config.cache_dir)
    lora_text_encoders = config.train_mode == "lora" and config.train_text_encoder
    weight_files.check_exportable(pipeline, single_file=config.export_single_file,
                                  lora_text_encoders=lora_text_encoders,
                                  lora_variant=config.lora_variant if config.train_mode == "lora" else None)
    resolution = resolve_resolution(ctx, pipeline)
    family = families.for_pipeline(pipeline)
    # Before class images and training: a mode that cannot fit the GPU even with every memory
    # saving on is exit 2 in one line, not an out-of-memory at the first step (CUDA only).
    memory_fit.check(config, family, pipeline, resolution, device_bytes)
    # Before fast_pipeline swaps the scheduler for sampling: the objective reads the base model's own.
    objective = family.training_objective(pipeline, ObjectiveOptions.from_config(config))
    identifier = (subject_identifier.choose_identifier(pipeline.tokenizer) if config.identifier == "auto"
                  else subject_identifier.user_identifier(pipeline.tokenizer, config.identifier))
    logger.info("identifier %r (%s, token ids %s)", identifier.token, identifier.chosen,
                identifier.token_ids)
    guidance_scale, save_precision = resolve_family_defaults(ctx, pipeline)
    ctx.model = model = LoadedModel(
        base=base, pipeline=sampling.fast_pipeline(pipeline), objective=objective,
        resolution=resolution, identifier=identifier,
        prompts=prompts_for(config, identifier.token, ctx.captions),
        guidance_scale=guidance_scale, save_precision=save_precision)
    ctx.training_photos = photos_at(ctx, resolution)
    ctx.result.identifier = Identifier(token=identifier.token, chosen=identifier.chosen,
                                       token_ids=list(identifier.token_ids))
    ctx.result.prompts = model.prompts
    ctx.result.base_model = BaseModelInfo(
        source=base.source, fingerprint=base.fingerprint,
        prediction_type=objective.prediction_type, family=family.name,
        license=model_card.declared_license(base, config.cache_dir))


def resolve_resolution(ctx: RunContext, pipeline) -> int:
    """--resolution with auto resolved to the family's native resolution, once: every later phase
    (class images and their cache key, training, samples, evaluation) reads it from the
    `LoadedModel`, and result.json records it (`training.resolution`, and in `config` where the
    run records it)."""
    resolution = base_models.training_resolution(ctx.config.resolution, pipeline)
    if ctx.config.resolution is None:
        logger.info("resolution auto: %d px (the base model's native resolution)", resolution)
        ctx.result.config["resolution"] = resolution
    ctx.result.training.resolution = resolution
    if ctx.config.aspect_buckets:  # refused before class images are generated
        buckets.check_resolution(resolution, families.for_pipeline(pipeline).latent_granularity(pipeline))
    return resolution


def resolve_family_defaults(ctx: RunContext, pipeline) -> tuple[float, str]:
    """--guidance-scale and --save-precision with auto resolved to the family's defaults, once
    (as the resolution): later phases read them from the `LoadedModel` (`run_config`), and
    result.json's `config` records the resolved values."""
    config = ctx.config
    guidance_scale = base_models.sampling_guidance(config.guidance_scale, pipeline)
    save_precision = base_models.weights_precision(config.save_precision, pipeline)
    for name, value in (("guidance_scale", guidance_scale), ("save_precision", save_precision)):
        if getattr(config, name) != value:
            logger.info("%s auto: %s (the model family's)", name, value)
            ctx.result.config[name] = value
    return guidance_scale, save_precision


def photos_at(ctx: RunContext, resolution: int) -> subject_photos.SubjectPhotos | None:
    """The validated photos at the training resolution: phase validate's when it decoded them at
    it, else decoded again (the same pixels as an explicit --resolution)."""
    decoded_at = ctx.config.resolution or subject_photos.AUTO_DECODE_RESOLUTION
    if ctx.photos is None or resolution == decoded_at:
        return ctx.photos
    return subject_photos.load_subject_photos(ctx.work / "photos", ctx.run_config, skipped=ctx.skipped)


def prompts_for(config: TrainConfig, token: str,
                photo_captions: dict[str, captions.Caption] | None = None) -> Prompts:
    """The config's prompt templates with the identifier and the class noun filled in, and each
    captioned photo's prompt (captions.fill)."""
    def fill(template: str) -> str:
        return subject_identifier.format_prompt(template, token, config.class_noun)

    filled = {photo: captions.fill(caption, token, config.class_noun)
              for photo, caption in (photo_captions or {}).items()}
    return Prompts(instance=fill(config.instance_prompt), class_prompt=fill(config.class_prompt),
                   validation=[fill(p) for p in config.validation_prompts], captions=filled or None)
