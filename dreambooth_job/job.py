"""One DreamBooth job, phase by phase: download, validate, load_model, class_images, train, sample,
(evaluate), upload. `run(config)` is the whole job.

Guarantees, in the order the code keeps them:
- the operator's policy (prefixes, hosts, ceilings: config/policy_checks.py) holds for the config the pod got,
  whatever wrote it: an option outside it is exit 2, before anything is read or sent;
- an option this machine cannot run (8-bit Adam without bitsandbytes or CUDA, --compile-unet
  without a compiler) is refused first, exit 2, before anything is downloaded (training/preflight.py);
- an object store that enforces conditional writes, and a lease on the output prefix, so two pods
  never train into it at once; this Job's retry takes over its killed predecessor's (storage/lease.py);
- a completed run of the same config is left alone (exit 0 without downloading anything);
- training resumes from the newest checkpoint that verifies (training/checkpoint.py), and SIGTERM during
  training ends with a fresh checkpoint and ExitCode.TERMINATED (termination.py);
- checkpoints upload in the background while training goes on; the one in flight ends before
  publishing deletes them and before the lease goes (training/checkpoint.py);
- a full disk exits 75 (retryable, on another node, from the last checkpoint) (storage/disk.py);
- result.json and then the completion marker are written after everything they describe; a
  failed run leaves result.json "failed" with its one-line error and never the marker.
- with --notify-url, one POST once the outcome is final (success or exit 2), after result.json;
  a host the operator does not allow is exit 2 before any request, and a receiver that fails
  never changes the exit code (outputs/notify.py).

The phases live in dreambooth_job/phases/, one module each, and share one `RunContext`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from dreambooth_job import log
from dreambooth_job.config.operator_policy import OperatorPolicy
from dreambooth_job.config.policy_checks import check_policy
from dreambooth_job.config.run_identity import config_fingerprint
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.events import JobObserver, ObserverGroup
from dreambooth_job.exit_codes import ExitCode, JobError
from dreambooth_job.metrics import PrometheusObserver
from dreambooth_job.outputs import notify
from dreambooth_job.outputs.result import COMPLETION_MARKER
from dreambooth_job.phases import (
    class_images,
    evaluation,
    existing_output,
    fine_tune,
    load_model,
    photos,
    publish,
    samples,
)
from dreambooth_job.phases.context import RunContext
from dreambooth_job.storage import disk, s3_client
from dreambooth_job.storage import places as storage
from dreambooth_job.storage.lease import check_conditional_writes, holding
from dreambooth_job.training import progress
from dreambooth_job.training.preflight import check_capabilities

logger = logging.getLogger("dreambooth_job")


class Phase(NamedTuple):
    name: str
    run: Callable[[RunContext], None]
    wanted: Callable[[RunContext], bool] = lambda ctx: True


PHASES = (
    Phase("download", photos.download),
    Phase("validate", photos.validate),
    Phase("load_model", load_model.load),
    Phase("class_images", class_images.prepare, class_images.wanted),
    Phase("train", fine_tune.train),
    Phase("sample", samples.final),
    Phase("evaluate", evaluation.evaluate, evaluation.wanted),
    Phase("upload", publish.upload),
)


def run(config: TrainConfig, observer: JobObserver | None = None) -> ExitCode:
    """Run the whole job: ExitCode.OK, or a JobError carrying the exit code and a one-line reason.

    Metrics are served (and pushed) from before the first phase to after the last, and progress
    goes to a bar on a terminal or to a log line at a fixed interval otherwise.
    """

    config, fingerprint = resolve_ids(config), config_fingerprint(config)
    policy = OperatorPolicy.from_env()
    # The operator's prefixes, hosts and ceilings once more, in the pod, before anything is read
    # or sent: the config may have come from a chart value, a file or extraArgs, never checked
    # by `submit` or `batch` (exit 2 naming the option).
    check_policy(config, policy)
    # Before any request leaves the pod (the first push, the completion call): exit 2 for a host
    # the operator does not allow or a signing key that is missing.
    notify.check_destinations(config, policy)
    notifier = notify.Notifier.for_run(config, os.environ)
    metrics = PrometheusObserver(config)  # the resolved ids label every metric
    observers = ObserverGroup(
        metrics, progress.for_log_format(config.log_format, interval=config.progress_interval_seconds),
        observer or JobObserver())
    with metrics:
        return run_context(RunContext.create(config, fingerprint, observers, notifier))


def resolve_ids(config: TrainConfig) -> TrainConfig:
    """The config with its subject id and job id (subject and fingerprint) filled in."""
    subject_id = config.resolved_subject_id
    return dataclasses.replace(
        config, subject_id=subject_id,
        job_id=config.job_id or f"{subject_id}-{config_fingerprint(config)[:8]}")


def run_context(ctx: RunContext) -> ExitCode:
    """Run every phase; on failure record it (result.json, metrics) and raise a JobError."""
    config = ctx.config
    log.configure(config.log_format, job_id=config.job_id, subject_id=config.subject_id)
    s3_client.set_observer(ctx.observer)
    storage.set_credentials_wait(config.storage_credentials_wait_seconds)
    with ctx.stop.installed(), contextlib.ExitStack() as held:
        try:
            # Before the lease and any download: an option this machine cannot run is bad input.
            check_capabilities(config)
            check_conditional_writes(config.output, OperatorPolicy.from_env())
            held.enter_context(holding(ctx.lease))
            # Closed (the upload in flight ended) before the lease goes: it writes under --output.
            held.enter_context(ctx.uploads)
            if not existing_output.already_complete(ctx):
                existing_output.check_checkpoints(ctx)
                evaluation.check(ctx)
                # A full disk is worth a retry (on another node, from the last checkpoint).
                with tempfile.TemporaryDirectory(prefix="dreambooth-job-") as work, \
                        disk.writing(work, config.cache_dir):
                    ctx.work = Path(work)
                    run_phases(ctx)
        except JobError as exc:
            logger.error("%s", exc.message)
            fail(ctx, exc)
            raise
        except Exception as exc:
            logger.exception("unexpected error")
            error = JobError(f"unexpected {type(exc).__name__}: {exc}")
            fail(ctx, error)
            raise error from exc
    ctx.observer.phase_started("done")
    notify.announce(ctx.notifier, ctx.observer, config, ExitCode.OK)
    ctx.observer.finished(exit_code=int(ExitCode.OK))
    return ExitCode.OK


def run_phases(ctx: RunContext) -> None:
    for phase in PHASES:
        if phase.wanted(ctx):
            with ctx.phase(phase.name):
                phase.run(ctx)
    publish.publish(ctx)


def fail(ctx: RunContext, error: JobError) -> None:
    """Record the failure: result.json "failed" with the one-line error, then the metrics."""
    ctx.result.failed(error.exit_code, log.redact(error.message))
    written = write_failed_result(ctx)
    ctx.observer.phase_started("failed")
    notify.announce(ctx.notifier, ctx.observer, ctx.config, error.exit_code, error.message,
                    result_written=written)
    ctx.observer.finished(exit_code=int(error.exit_code))


def write_failed_result(ctx: RunContext) -> bool:
    """Leave a failed result.json (never the completion marker) so tooling can say why; True
    when it was written."""
    output = ctx.config.output
    if not ctx.lease.held:
        return False  # the output belongs to whoever holds its lease: write nothing there
    try:
        if storage.exists(storage.join(output, COMPLETION_MARKER)):
            return False  # never overwrite a completed run's result with a failed rerun's
        ctx.result.write(output)
    except Exception as exc:  # noqa: BLE001 - reporting must not mask the original failure
        logger.warning("could not write the failed result.json: %s", exc)
        return False
    try:  # the page too: a failed run's error, photos, grids and loss so far, where one looks first
        publish.write_page(ctx)
    except Exception as exc:  # noqa: BLE001 - as above
        logger.warning("could not write the failed run's page: %s", exc)
    return True
