"""What the phases of one run share: the config, the collaborators (observer, lease, stop request,
checkpoint store and uploads), the record (result.json) and what each phase produced."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.events import JobObserver
from dreambooth_job.outputs.loss_history import LossHistory
from dreambooth_job.outputs.result import (
    RESULT_FILE,
    BaseModelInfo,
    ClassImagesInfo,
    Identifier,
    Outputs,
    Prompts,
    RunResult,
    Training,
)
from dreambooth_job.redaction import redact_value
from dreambooth_job.storage import places as storage
from dreambooth_job.storage.lease import Lease, pod_identity
from dreambooth_job.termination import StopRequest
from dreambooth_job.training.checkpoint import BackgroundUploads, CheckpointStore

logger = logging.getLogger("dreambooth_job")


@dataclass
class RunContext:
    config: TrainConfig  # ids resolved (job.resolve_ids)
    fingerprint: str
    observer: JobObserver
    result: RunResult
    lease: Lease
    stop: StopRequest
    checkpoints: CheckpointStore
    uploads: BackgroundUploads = field(default_factory=BackgroundUploads)
    notifier: Any = None  # notify.Notifier: the completion call, with --notify-url
    work: Path = Path()  # the run's temporary directory, once it exists
    # What the phases produced, in their order.
    skipped: list = field(default_factory=list)  # data.Rejected: photos not downloaded
    photos: Any = None  # data.SubjectPhotos
    base: Any = None  # models.BaseModel
    pipeline: Any = None
    noise_scheduler: Any = None
    identifier: Any = None  # identifiers.Identifier
    prompts: Prompts | None = None
    class_images: list | None = None
    trainer: Any = None  # train.Trainer; only phases/fine_tune.py calls it
    steps_done: int = 0
    # The logged losses (the run page's curve), kept with each checkpoint.
    loss_history: LossHistory = field(default_factory=LossHistory)

    @classmethod
    def create(cls, config: TrainConfig, fingerprint: str, observer: JobObserver,
               notifier: Any = None) -> RunContext:
        return cls(config=config, fingerprint=fingerprint, observer=observer, notifier=notifier,
                   result=new_result(config, fingerprint),
                   lease=Lease(config.output, wait_seconds=config.lease_wait_seconds, **pod_identity()),
                   # auto (None): the sizing profile's, once the model has loaded (phases/fine_tune.py)
                   stop=StopRequest(config.termination_grace_seconds or 0.0),
                   checkpoints=CheckpointStore(config.output, keep=max(1, config.checkpoints_keep)))

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time a phase (result.json, metrics, log) and renew the lease after it."""
        self.observer.phase_started(name)
        logger.info("phase %s started", name)
        started = time.perf_counter()
        yield
        took = self.result.durations_seconds[name] = round(time.perf_counter() - started, 3)
        self.observer.phase_finished(name, took)
        logger.info("phase %s done in %.1fs", name, took)
        self.lease.renew()


def redacted_config(config: TrainConfig) -> dict:
    """The config as result.json and checkpoints record it: the logs' redaction (redaction.py)."""
    return redact_value(config.to_dict())


def new_result(config: TrainConfig, fingerprint: str) -> RunResult:
    """result.json before any phase ran: what the config says, filled in as the phases run."""
    return RunResult(
        job_id=config.job_id, subject_id=config.subject_id, batch_id=config.batch_id,
        config=redacted_config(config), config_fingerprint=fingerprint,
        identifier=Identifier(token=config.identifier, chosen="user"),
        prompts=Prompts(instance=config.instance_prompt, class_prompt=config.class_prompt,
                        validation=list(config.validation_prompts)),
        base_model=BaseModelInfo(source=config.base_model),
        class_images=ClassImagesInfo(
            requested=config.num_class_images if config.prior_preservation else 0),
        training=Training(max_train_steps=config.max_train_steps),
        outputs=Outputs(result=storage.join(config.output, RESULT_FILE)))
