"""What the phases of one run share: the config, the collaborators (observer, lease, stop request,
checkpoint store and uploads), the record (result.json) and what each phase produced.

Each phase adds its own part and never replaces another's: `config` stays the job's config
(--resolution auto stays None there); what phase load_model learns (the model, its resolution,
guidance scale and save precision, the identifier and the prompts) is its `LoadedModel`, and
`run_config` is the config as the run trains with it."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dreambooth_job.config import subject_identifier
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.events import JobObserver
from dreambooth_job.outputs.loss_history import LossHistory
from dreambooth_job.outputs.notify import Notifier
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
from dreambooth_job.training import base_models
from dreambooth_job.training.captions import Caption
from dreambooth_job.training.checkpoint import BackgroundUploads, CheckpointStore
from dreambooth_job.training.subject_photos import Rejected, SubjectPhotos

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from PIL import Image

    from dreambooth_job.families.objective import TrainingObjective
    from dreambooth_job.training.trainer import Trainer

logger = logging.getLogger("dreambooth_job")


@dataclass(frozen=True)
class LoadedModel:
    """Phase load_model's part: the base model as the run trains it."""

    base: base_models.BaseModel
    pipeline: DiffusionPipeline  # sampling.fast_pipeline's: the grids' and class images' sampler
    objective: TrainingObjective
    resolution: int  # --resolution, auto resolved (base_models.training_resolution)
    identifier: subject_identifier.Identifier
    prompts: Prompts  # the config's templates with the identifier and the class noun filled in
    guidance_scale: float  # --guidance-scale, auto resolved (base_models.sampling_guidance)
    save_precision: str  # --save-precision, auto resolved (base_models.weights_precision)


@dataclass
class RunContext:
    config: TrainConfig  # the job's, ids resolved (job.resolve_ids); never replaced
    fingerprint: str
    observer: JobObserver
    result: RunResult
    lease: Lease
    stop: StopRequest
    checkpoints: CheckpointStore
    uploads: BackgroundUploads = field(default_factory=BackgroundUploads)
    notifier: Notifier | None = None  # the completion call, with --notify-url
    work: Path = Path()  # the run's temporary directory, once it exists
    # What the phases produced, in their order, each set once by the phase named.
    skipped: list[Rejected] = field(default_factory=list)  # download: photos not downloaded
    photos: SubjectPhotos | None = None  # validate: decoded at --resolution (auto: the largest)
    captions: dict[str, Caption] = field(default_factory=dict)  # validate: by photo, unfilled
    model: LoadedModel | None = None  # load_model
    training_photos: SubjectPhotos | None = None  # load_model: the photos at model.resolution
    class_images: list[Image.Image] | None = None  # class_images
    trainer: Trainer | None = None  # train; only phases/fine_tune.py calls it
    steps_done: int = 0  # train
    # The logged losses (the run page's curve), kept with each checkpoint.
    loss_history: LossHistory = field(default_factory=LossHistory)

    @classmethod
    def create(cls, config: TrainConfig, fingerprint: str, observer: JobObserver,
               notifier: Notifier | None = None) -> RunContext:
        return cls(config=config, fingerprint=fingerprint, observer=observer, notifier=notifier,
                   result=new_result(config, fingerprint),
                   lease=Lease(config.output, wait_seconds=config.lease_wait_seconds, **pod_identity()),
                   # auto (None): the sizing profile's, once the model has loaded (phases/fine_tune.py)
                   stop=StopRequest(config.termination_grace_seconds or 0.0),
                   checkpoints=CheckpointStore(config.output, keep=max(1, config.checkpoints_keep)))

    @property
    def run_config(self) -> TrainConfig:
        """The config as the run trains with it: the job's, with phase load_model's resolution,
        guidance scale and save precision. What class images, training, grids, evaluation,
        the weight files and checkpoints read."""
        model = self.loaded
        return dataclasses.replace(self.config, resolution=model.resolution,
                                   guidance_scale=model.guidance_scale,
                                   save_precision=model.save_precision)

    @property
    def loaded(self) -> LoadedModel:
        """Phase load_model's part, for the phases after it."""
        if self.model is None:
            raise RuntimeError("the model is read before phase load_model ran")
        return self.model

    @property
    def subject_photos(self) -> SubjectPhotos:
        """The photos at the training resolution (phase load_model's), for the phases after it."""
        if self.training_photos is None:
            raise RuntimeError("the training photos are read before phase load_model ran")
        return self.training_photos

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
