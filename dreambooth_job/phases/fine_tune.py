"""Phase train: resume from the newest checkpoint that verifies, train to --max-train-steps, and
after each step sample a grid, checkpoint or stop as the `CheckpointPolicy` and the stop request
(SIGTERM) say, and keep the lease.

Every call into the `Trainer` is in this module and trained_model.py, through which the other
phases reach the trained model.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time

from dreambooth_job.events import ObserverGroup
from dreambooth_job.exit_codes import InvalidInputError, TerminatedError
from dreambooth_job.outputs.result import Prompts
from dreambooth_job.phases import samples
from dreambooth_job.phases.context import RunContext, redacted_config
from dreambooth_job.phases.trained_model import built_trainer
from dreambooth_job.storage import disk
from dreambooth_job.training import sizing
from dreambooth_job.training.checkpoint import Checkpoint, CheckpointPolicy

logger = logging.getLogger("dreambooth_job")


def train(ctx: RunContext) -> None:
    from dreambooth_job.training.trainer import Trainer  # deferred: trainer imports PIL

    config, model, photos = ctx.run_config, ctx.loaded, ctx.subject_photos
    prompts = model.prompts
    ctx.trainer = trainer = Trainer(
        config, model.pipeline, model.objective, instance_images=photos.images,
        instance_sizes=[photo.original_size for photo in photos.photos],
        instance_prompt=prompts.instance, class_images=ctx.class_images,
        class_prompt=prompts.class_prompt, observer=ObserverGroup(ctx.observer, ctx.loss_history),
        instance_captions=photo_prompts(prompts, photos.used))
    trainer.setup()
    if trainer.inputs.buckets is not None:
        ctx.result.photos.buckets = {name: list(size)
                                     for name, size in zip(photos.used, trainer.inputs.buckets)}
    family = trainer.family
    ctx.stop.grace_seconds = sizing.job_budget(
        config.termination_grace_seconds, family.name, trainer.mode.name,
        sum(p.numel() for p in trainer.models.trainable), config.resolved_optimizer,
        variant=family.variant(dict(family.denoiser(model.pipeline).config)), ema=config.ema_decay > 0)
    resumed_from = resume(ctx)
    with ctx.stop.deferred():
        trained = trainer.train(on_step_end=StepEnd(ctx, CheckpointPolicy.from_config(config)))
    # Publishing deletes the checkpoints: no upload may still be writing one.
    ctx.uploads.wait()
    ctx.steps_done = trained.steps_done
    # Trainer.train's record, and what only this phase knows.
    ctx.result.training = dataclasses.replace(trained, resumed_from_step=resumed_from)


def photo_prompts(prompts: Prompts, photos: list[str]) -> list[str] | None:
    """Each photo's prompt when any photo has a caption (the instance prompt for the others);
    None without captions, so that the Trainer trains as it always did."""
    if not prompts.captions:
        return None
    return [prompts.captions.get(photo, prompts.instance) for photo in photos]


def resume(ctx: RunContext) -> int | None:
    """Load the newest checkpoint that verifies; its step, or None when there is none."""
    local_dir = ctx.work / "resume"
    checkpoint = ctx.checkpoints.fetch_newest_valid(local_dir)
    if checkpoint is None:
        return None
    token = ctx.loaded.identifier.token
    if checkpoint.manifest.get("identifier") != token:
        raise InvalidInputError(
            f"checkpoint {checkpoint.uri} was trained with identifier "
            f"{checkpoint.manifest.get('identifier')!r}, this run uses {token!r}; "
            "pass --restart to discard it")
    try:
        built_trainer(ctx).load_state(local_dir, checkpoint.step)
    except InvalidInputError as exc:
        raise InvalidInputError(f"checkpoint {checkpoint.uri} cannot be resumed: {exc.message}; "
                                "pass --restart to discard it") from None
    ctx.loss_history.load(local_dir, up_to_step=checkpoint.step)
    # Loaded: the copy would only take local disk (a whole checkpoint) until the end of the run.
    shutil.rmtree(local_dir, ignore_errors=True)
    ctx.observer.resumed(step=checkpoint.step)
    logger.info("resuming from checkpoint %s at step %d", checkpoint.uri, checkpoint.step)
    return checkpoint.step


class StepEnd:
    """Called after each training step: a validation grid every --sample-every steps, a
    checkpoint when the policy says so (uploaded in the background), or on a stop request a
    checkpoint uploaded at once and TerminatedError; and the lease kept."""

    def __init__(self, ctx: RunContext, policy: CheckpointPolicy):
        self.ctx, self.policy = ctx, policy
        self.state_dir = ctx.work / "checkpoint"

    def __call__(self, step: int) -> None:
        ctx, config = self.ctx, self.ctx.config
        final = step >= config.max_train_steps
        if config.sample_every and step % config.sample_every == 0 and not final:
            samples.grid(ctx, step)
        if self.policy.due(step, stop_requested=ctx.stop.requested):
            self.checkpoint(step)
        ctx.lease.renew()

    def checkpoint(self, step: int) -> None:
        ctx = self.ctx
        if ctx.stop.requested:
            # The checkpoint about to be written supersedes the one uploading: waiting for it
            # could take the whole grace period (SDXL's 31 GB), so it stops at its next chunk.
            if ctx.uploads.abandon():
                logger.info("abandoned the upload of the previous checkpoint: step %d's replaces it",
                            step)
        else:
            ctx.uploads.wait()  # it may still be reading the state directory
        started = time.monotonic()
        with disk.writing(self.state_dir):  # torch.save's error does not say "no space"
            built_trainer(ctx).save_state(self.state_dir)
            ctx.loss_history.save(self.state_dir)  # a resumed run's page draws the whole curve
        self.policy.saved()
        if ctx.stop.requested:
            saved = self.upload(step, started)
            stop = ctx.stop
            raise TerminatedError(
                f"terminated by {stop.signal_name} at step {step}; checkpoint {saved.uri} written "
                f"{stop.grace_seconds - stop.seconds_left():.1f}s after the signal")
        logger.info("checkpoint of step %d saved in %.1fs; uploading while training goes on",
                    step, time.monotonic() - started)
        ctx.uploads.submit(lambda: self.upload(step, started))
        ctx.lease.renew(force=True)

    def upload(self, step: int, started: float) -> Checkpoint:
        """Hash, upload and publish the saved state."""
        ctx = self.ctx
        # The config as trained (auto resolved), as result.json records it.
        saved = ctx.checkpoints.save(self.state_dir, step, redacted_config(ctx.run_config),
                                     ctx.loaded.identifier.token, cancel=ctx.uploads.abandoning)
        ctx.observer.checkpoint_written(step=step)
        logger.info("checkpoint %s written in %.1fs", saved.uri, time.monotonic() - started)
        return saved

