"""The trained model as the phases after training see it: phase train's Trainer, a pipeline that
samples with the weights trained so far, and the published weight files written from it
(outputs/weight_files.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dreambooth_job import __version__
from dreambooth_job.outputs import weight_files
from dreambooth_job.phases.context import RunContext

if TYPE_CHECKING:
    from dreambooth_job.training.trainer import Trainer


def built_trainer(ctx: RunContext) -> Trainer:
    """Phase train's `Trainer`, for the calls after it was built."""
    if ctx.trainer is None:
        raise RuntimeError("the trainer is used before phase train built it")
    return ctx.trainer


def inference_pipeline(ctx: RunContext):
    """A pipeline that samples with the weights trained so far."""
    return built_trainer(ctx).inference_pipeline()


def save_outputs(ctx: RunContext, directory: Path) -> None:
    """The published weight files of the trained pipeline (outputs/weight_files.py: what the
    trained model carries decides full or LoRA files) under `directory`, recorded in result.json."""
    trainer = built_trainer(ctx)
    pipe = trainer.inference_pipeline()
    denoiser = trainer.family.denoiser(pipe)
    denoiser.eval()
    try:
        written = weight_files.write_outputs(pipe, directory, output_settings(ctx))
    finally:
        denoiser.train()
    weight_files.record(ctx.result.outputs, written, ctx.config.output)


def output_settings(ctx: RunContext) -> weight_files.OutputSettings:
    config = ctx.run_config  # --save-precision auto resolved
    return weight_files.OutputSettings(
        subject_id=config.subject_id, precision=config.save_precision,
        single_file=config.export_single_file, lora_merge=config.lora_merge,
        metadata=weight_files.header_metadata(
            base_fingerprint=ctx.loaded.base.fingerprint, identifier=ctx.loaded.identifier.token,
            class_noun=config.class_noun, steps=ctx.steps_done, subject_id=config.subject_id,
            precision=config.save_precision, version=__version__))
