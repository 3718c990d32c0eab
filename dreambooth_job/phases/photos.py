"""Phases download and validate: the subject's photos (and their captions, training/captions.py),
from --instance-data to the work directory, then decoded and checked; every photo not trained on
is named in result.json with the reason."""

from __future__ import annotations

from dreambooth_job.outputs.result import Photos, Rejection
from dreambooth_job.phases.context import RunContext
from dreambooth_job.training import captions, subject_photos


def download(ctx: RunContext) -> None:
    ctx.skipped = subject_photos.download_photos(ctx.config, ctx.work / "photos",
                                                 captions_dir=ctx.work / "captions").skipped
    # Named even when validation then fails for too few photos.
    ctx.result.photos = Photos(rejected=_rejections(ctx.skipped))


def validate(ctx: RunContext) -> None:
    ctx.photos = subject_photos.load_subject_photos(ctx.work / "photos", ctx.config, skipped=ctx.skipped)
    ctx.result.photos = Photos(used=list(ctx.photos.used), rejected=_rejections(ctx.photos.rejected))
    ctx.captions = captions.read_captions(ctx.work / "captions", ctx.photos.used,
                                          [r.file for r in ctx.photos.rejected])


def _rejections(records: list[subject_photos.Rejected]) -> list[Rejection]:
    return [Rejection(file=r.file, reason=r.reason) for r in records]
