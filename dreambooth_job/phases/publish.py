"""Phase upload, then publishing: the weight files under --output, result.json, then the completion
marker, written after everything it vouches for; then the checkpoints are no longer needed."""

from __future__ import annotations

import logging

from dreambooth_job import storage
from dreambooth_job.phases.context import RunContext
from dreambooth_job.result import mark_complete

logger = logging.getLogger("dreambooth_job")


def upload(ctx: RunContext) -> None:
    """The weight files phase sample wrote (model/, lora/, the single file) to --output."""
    storage.upload_dir(ctx.work / "output", ctx.config.output)


def publish(ctx: RunContext) -> None:
    config, result = ctx.config, ctx.result
    ctx.lease.renew(force=True)
    samples = storage.join(config.output, "samples")
    result.outputs.samples = [storage.join(samples, f.relative_path)
                              for f in storage.list_files(samples, [".png"])]
    result.succeeded()
    result.write(config.output)
    mark_complete(config.output)
    ctx.checkpoints.delete_all()
    logger.info("done: %s, samples %s, result %s",
                result.outputs.model or f"LoRA {', '.join(result.outputs.lora or [])}", samples,
                result.outputs.result)
