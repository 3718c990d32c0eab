"""One DreamBooth job, phase by phase: download, validate, load_model, class_images, train, sample,
upload. `run(config)` is the whole job; it returns the exit code and never leaves a half-published
output: result.json and the completion marker are written after everything they describe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import re
import tempfile
import time
from pathlib import Path

from dreambooth_job import __version__, log, storage
from dreambooth_job.config import TrainConfig
from dreambooth_job.events import JobObserver
from dreambooth_job.exit_codes import ExitCode, InvalidInputError, JobError
from dreambooth_job.result import COMPLETION_MARKER, RESULT_FILE, mark_complete, write_result

logger = logging.getLogger("dreambooth_job")

# Fields that do not change the trained model: a rerun differing only in these is the same run.
OPERATIONAL_FIELDS = frozenset({
    "cache_dir", "job_id", "log_format", "metrics_port", "pushgateway", "batch_id", "force",
    "restart", "checkpoint_every", "checkpoint_interval_minutes", "checkpoints_keep",
    "termination_grace_seconds", "log_every", "class_data", "evaluate", "sample_every",
})


def config_fingerprint(config: TrainConfig) -> str:
    relevant = {k: v for k, v in config.to_dict().items() if k not in OPERATIONAL_FIELDS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def default_subject_id(instance_data: str) -> str:
    name = instance_data.rstrip("/").rsplit("/", 1)[-1] or "subject"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "subject"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Job:
    def __init__(self, config: TrainConfig, observer: JobObserver | None = None):
        subject_id = config.subject_id or default_subject_id(config.instance_data)
        fingerprint = config_fingerprint(config)
        self.config = dataclasses.replace(
            config, subject_id=subject_id, job_id=config.job_id or f"{subject_id}-{fingerprint[:8]}")
        self.fingerprint = fingerprint
        self.observer = observer or JobObserver()
        self.durations: dict[str, float] = {}
        self.result: dict = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        self.observer.phase_started(name)
        logger.info("phase %s started", name)
        started = time.perf_counter()
        yield
        self.durations[name] = round(time.perf_counter() - started, 3)
        self.observer.phase_finished(name, self.durations[name])
        logger.info("phase %s done in %.1fs", name, self.durations[name])

    # ------------------------------------------------------------------------------------------
    def run(self) -> ExitCode:
        """Run every phase; on failure record it (result.json, metrics) and raise a JobError."""
        config = self.config
        log.configure(config.log_format, job_id=config.job_id, subject_id=config.subject_id)
        storage.set_observer(self.observer)
        self.result = self._result_skeleton()
        try:
            with tempfile.TemporaryDirectory(prefix="dreambooth-job-") as work:
                self._run_phases(Path(work))
        except JobError as exc:
            logger.error("%s", exc.message)
            self._fail(exc)
            raise
        except Exception as exc:
            logger.exception("unexpected error")
            error = JobError(f"unexpected {type(exc).__name__}: {exc}")
            self._fail(error)
            raise error from exc
        self.observer.phase_started("done")
        self.observer.finished(exit_code=int(ExitCode.OK))
        return ExitCode.OK

    def _fail(self, error: JobError) -> None:
        self._record_failure(error.exit_code, error.message)
        self.observer.phase_started("failed")
        self.observer.finished(exit_code=int(error.exit_code))

    def _run_phases(self, work: Path) -> None:
        from dreambooth_job import data, identifiers, models, priors, sampling
        from dreambooth_job.train import Trainer

        config = self.config
        outputs = work / "output"
        with self.phase("download"):
            photo_dir = work / "photos"
            files = storage.download_dir(config.instance_data, photo_dir)
            if not files:
                raise InvalidInputError(f"--instance-data {config.instance_data} holds no files")
        with self.phase("validate"):
            photos = data.load_subject_photos(photo_dir, config)
            self.result["photos"] = {"used": photos.used,
                                     "rejected": [dataclasses.asdict(r) for r in photos.rejected]}
        with self.phase("load_model"):
            base = models.resolve_base_model(config.base_model, config.cache_dir)
            pipeline = models.load_pipeline(base, config.cache_dir)
            from diffusers import DDPMScheduler

            noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
            pipeline = sampling.fast_pipeline(pipeline)
            identifier = (identifiers.choose_identifier(pipeline.tokenizer) if config.identifier == "auto"
                          else identifiers.user_identifier(pipeline.tokenizer, config.identifier))
            logger.info("identifier %r (%s, token ids %s)", identifier.token, identifier.chosen,
                        identifier.token_ids)
            fill = lambda template: identifiers.format_prompt(template, identifier.token, config.class_noun)  # noqa: E731
            prompts = {"instance": fill(config.instance_prompt), "class": fill(config.class_prompt),
                       "validation": [fill(p) for p in config.validation_prompts]}
            self.result.update(
                identifier=dataclasses.asdict(identifier), prompts=prompts,
                base_model={"source": base.source, "fingerprint": base.fingerprint,
                            "prediction_type": noise_scheduler.config.prediction_type})
        class_images = None
        if config.prior_preservation:
            with self.phase("class_images"):
                pipeline.to(_inference_device())
                cached = priors.prepare_class_images(pipeline, config, model_fingerprint=base.fingerprint,
                                                     class_prompt=prompts["class"])
                class_images = cached.images
                self.observer.class_images(generated=cached.generated, reused=cached.reused)
                self.result["class_images"] = {
                    "requested": config.num_class_images, "generated": cached.generated,
                    "reused": cached.reused, "cache_uri": cached.cache_uri, "cache_key": cached.cache_key}

        trainer = Trainer(config, pipeline, noise_scheduler, instance_images=photos.images,
                          instance_prompt=prompts["instance"], class_images=class_images,
                          class_prompt=prompts["class"], observer=self.observer)
        samples: list[Path] = []

        def sample(step: int) -> None:
            grid = sampling.validation_grid(
                trainer.inference_pipeline(), prompts["validation"], config.num_validation_images,
                seed=config.seed, resolution=config.resolution, num_inference_steps=config.sample_steps,
                guidance_scale=config.guidance_scale, batch_size=config.sample_batch_size)
            path = outputs / "samples" / f"step-{step:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            grid.save(path)
            samples.append(path)

        def on_step_end(step: int) -> None:
            if config.sample_every and step % config.sample_every == 0 and step < config.max_train_steps:
                sample(step)

        with self.phase("train"):
            trainer.setup()
            trained = trainer.train(on_step_end)
            self.result["training"] = {"max_train_steps": config.max_train_steps,
                                       "resumed_from_step": None, **dataclasses.asdict(trained)}
        with self.phase("sample"):
            sample(trained.steps_done)
            trainer.save_model(outputs / "model")
        with self.phase("upload"):
            storage.upload_dir(outputs, config.output)
        self.result["outputs"] = {
            "model": storage.join(config.output, "model"),
            "samples": [storage.join(config.output, p.relative_to(outputs).as_posix()) for p in samples],
            "result": storage.join(config.output, RESULT_FILE)}
        self.result.update(status="succeeded", exit_code=0, finished_at=now_iso(),
                           durations_seconds=self.durations)
        write_result(config.output, self.result)
        mark_complete(config.output)
        logger.info("done: model %s, samples %s, result %s", self.result["outputs"]["model"],
                    storage.join(config.output, "samples"), self.result["outputs"]["result"])

    # ------------------------------------------------------------------------------------------
    def _result_skeleton(self) -> dict:
        config = self.config
        return {
            "schema_version": 1, "status": "failed", "exit_code": int(ExitCode.INTERNAL_ERROR),
            "error": None, "job_id": config.job_id, "subject_id": config.subject_id,
            "batch_id": config.batch_id, "package_version": __version__, "started_at": now_iso(),
            "config": config.to_dict(), "config_fingerprint": self.fingerprint,
            "identifier": {"token": config.identifier, "chosen": "user"},
            "prompts": {"instance": config.instance_prompt, "class": config.class_prompt,
                        "validation": list(config.validation_prompts)},
            "base_model": {"source": config.base_model, "fingerprint": "", "prediction_type": "epsilon"},
            "photos": {"used": [], "rejected": []},
            "class_images": {"requested": config.num_class_images if config.prior_preservation else 0,
                             "generated": 0, "reused": 0},
            "training": {"steps_done": 0, "max_train_steps": config.max_train_steps, "final_loss": None},
            "durations_seconds": {},
            "outputs": {"model": storage.join(config.output, "model"), "samples": [],
                        "result": storage.join(config.output, RESULT_FILE)},
            "metrics": None,
        }

    def _record_failure(self, code: ExitCode, message: str) -> None:
        """Leave a failed result.json (never the completion marker) so tooling can say why."""
        self.result.update(status="failed", exit_code=int(code), error=log.redact(message),
                           finished_at=now_iso(), durations_seconds=self.durations)
        try:
            if storage.exists(storage.join(self.config.output, COMPLETION_MARKER)):
                return  # never overwrite a completed run's result with a failed rerun's
            write_result(self.config.output, self.result)
        except Exception as exc:  # noqa: BLE001 - reporting must not mask the original failure
            logger.warning("could not write the failed result.json: %s", exc)


def _inference_device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(config: TrainConfig, observer: JobObserver | None = None) -> ExitCode:
    """Run the whole job: ExitCode.OK, or a JobError carrying the exit code and a one-line reason."""
    return Job(config, observer).run()
