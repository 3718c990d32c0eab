"""The trained model as the phases after training see it: a pipeline that samples with the weights
trained so far, and the published weight files written from it (outputs/weight_files.py)."""

from __future__ import annotations

from pathlib import Path

from dreambooth_job import __version__
from dreambooth_job.outputs import weight_files as outputs
from dreambooth_job.phases.context import RunContext


def inference_pipeline(ctx: RunContext):
    """A pipeline that samples with the weights trained so far."""
    return ctx.trainer.inference_pipeline()


def save_outputs(ctx: RunContext, directory: Path) -> None:
    """The published weight files of the trained pipeline (outputs/weight_files.py: what the trained model
    carries decides full or LoRA files) under `directory`, recorded in result.json."""
    pipe = ctx.trainer.inference_pipeline()
    pipe.unet.eval()
    try:
        written = outputs.write_outputs(pipe, directory, output_settings(ctx))
    finally:
        pipe.unet.train()
    outputs.record(ctx.result.outputs, written, ctx.config.output)


def output_settings(ctx: RunContext):
    config = ctx.config
    return outputs.OutputSettings(
        subject_id=config.subject_id, precision=config.save_precision,
        single_file=config.export_single_file, lora_merge=config.lora_merge,
        metadata=outputs.header_metadata(
            base_fingerprint=ctx.base.fingerprint, identifier=ctx.identifier.token,
            class_noun=config.class_noun, steps=ctx.steps_done, subject_id=config.subject_id,
            precision=config.save_precision, version=__version__))
