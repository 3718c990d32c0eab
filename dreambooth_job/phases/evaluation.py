"""Phase evaluate (with --evaluate): the paper's metrics for the fine-tuned model and, as the
baseline row, for the base model, into result.json's "metrics" and the metrics' gauges."""

from __future__ import annotations

from dreambooth_job.evaluation import gauges, metrics_block
from dreambooth_job.evaluation.evaluator import validate_config
from dreambooth_job.generation import sampling
from dreambooth_job.phases.context import RunContext
from dreambooth_job.phases.trained_model import inference_pipeline
from dreambooth_job.training import base_models
from dreambooth_job.training.devices import pick_device


def wanted(ctx: RunContext) -> bool:
    return ctx.config.evaluate


def check(ctx: RunContext) -> None:
    """Before any download or model load: a bad or disallowed --prompt-set fails at once."""
    if wanted(ctx):
        validate_config(ctx.config)


def evaluate(ctx: RunContext) -> None:
    from dreambooth_job.evaluation.evaluator import Evaluator  # deferred: evaluator imports PIL

    config, model = ctx.run_config, ctx.loaded
    token, photos = model.identifier.token, ctx.subject_photos.images
    evaluator = Evaluator.load(config)
    tuned = evaluator.evaluate(inference_pipeline(ctx), photos, token, config.class_noun,
                               label="finetuned")
    # Reloaded from the local cache: training changed the loaded weights in place.
    base_pipeline = sampling.fast_pipeline(base_models.load_pipeline(model.base, config.cache_dir))
    baseline = evaluator.evaluate(base_pipeline.to(pick_device()), photos, token,
                                  config.class_noun, label="base")
    ctx.observer.evaluation({**gauges(tuned), **gauges(baseline, prefix="base_")})
    ctx.result.metrics = metrics_block(baseline, tuned)
