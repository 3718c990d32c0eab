"""Phase upload, then publishing: the weight files under --output, result.json and the run page
(index.html), then the completion marker, written after everything it vouches for; then the
checkpoints are no longer needed."""

from __future__ import annotations

import logging

from dreambooth_job.outputs import run_page
from dreambooth_job.outputs.result import mark_complete
from dreambooth_job.phases.context import RunContext
from dreambooth_job.storage import places as storage

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
    write_page(ctx)
    mark_complete(config.output)
    ctx.checkpoints.delete_all()
    logger.info("done: %s, samples %s, result %s",
                result.outputs.model or f"LoRA {', '.join(result.outputs.lora or [])}", samples,
                result.outputs.result)


def write_page(ctx: RunContext) -> None:
    """`<output>/index.html` (outputs/run_page.py) from the record as result.json holds it (redacted), the
    loss history, thumbnails of the photos used and the grids uploaded so far."""
    output = ctx.config.output
    # The photos at the training resolution once the model has loaded, else as validated.
    photos = ctx.training_photos if ctx.training_photos is not None else ctx.photos
    thumbnails = [run_page.thumbnail_uri(photo.image) for photo in photos.photos] if photos else []
    grids = [f.relative_path for f in storage.list_files(storage.join(output, "samples"), [".png"])]
    page = run_page.render(ctx.result.to_json(), ctx.loss_history.points, grids=grids,
                           thumbnails=thumbnails)
    storage.write_bytes(storage.join(output, run_page.PAGE_FILE), page.encode(),
                        content_type="text/html; charset=utf-8")
