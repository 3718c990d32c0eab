"""One DreamBooth job, phase by phase: download, validate, load_model, class_images, train, sample,
(evaluate), upload. `run(config)` is the whole job.

Guarantees, in the order the code keeps them:
- an option this machine cannot run (8-bit Adam without bitsandbytes or CUDA, --compile-unet
  without a compiler) is refused first, exit 2, before anything is downloaded (preflight.py);
- an object store that enforces conditional writes, and a lease on the output prefix, so two pods
  never train into it at once; this Job's retry takes over its killed predecessor's (lease.py);
- a completed run of the same config is left alone (exit 0 without downloading anything);
- training resumes from the newest checkpoint that verifies (checkpoint.py), and SIGTERM during
  training ends with a fresh checkpoint and ExitCode.TERMINATED (termination.py);
- result.json and then the completion marker are written after everything they describe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

from dreambooth_job import __version__, devices, disk, log, storage
from dreambooth_job.checkpoint import BackgroundUploads, CheckpointStore, conflicts
from dreambooth_job.config import TrainConfig
from dreambooth_job.events import JobObserver, ObserverGroup
from dreambooth_job.exit_codes import ExitCode, InvalidInputError, JobError, TerminatedError
from dreambooth_job.lease import Lease, check_conditional_writes, pod_identity
from dreambooth_job.operator_policy import OperatorPolicy
from dreambooth_job.preflight import check_capabilities
from dreambooth_job.redaction import redact_value
from dreambooth_job.result import (
    COMPLETION_MARKER,
    RESULT_FILE,
    mark_complete,
    read_completed_result,
    write_result,
)
from dreambooth_job.termination import StopRequest

logger = logging.getLogger("dreambooth_job")

# Fields that do not change the trained model: a rerun differing only in these is the same run.
OPERATIONAL_FIELDS = frozenset({
    "cache_dir", "job_id", "log_format", "metrics_port", "pushgateway", "batch_id", "force",
    "restart", "checkpoint_every", "checkpoint_interval_minutes", "checkpoints_keep",
    "termination_grace_seconds", "log_every", "progress_interval_seconds", "class_data", "evaluate",
    "storage_credentials_wait_seconds",
    "sample_every",
    "lease_wait_seconds",
    "prompt_set", "images_per_prompt", "eval_max_prompts", "eval_class_images", "dino_model",
    "clip_model", "lpips_model",
    # Caps on the upload: a run within them trains the same model whatever their values.
    "max_photos", "max_photos_bytes",
    # Speed switches: the same model up to floating-point rounding.
    "adam_impl", "attention_backend", "channels_last", "compile_unet", "compile_mode",
})


def model_config(config: TrainConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in OPERATIONAL_FIELDS}


def config_fingerprint(config: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(model_config(config), sort_keys=True).encode()).hexdigest()


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Job:
    def __init__(self, config: TrainConfig, observer: JobObserver | None = None):
        subject_id = config.resolved_subject_id
        fingerprint = config_fingerprint(config)
        self.config = dataclasses.replace(
            config, subject_id=subject_id, job_id=config.job_id or f"{subject_id}-{fingerprint[:8]}")
        self.fingerprint = fingerprint
        self.observer = observer or JobObserver()
        self.durations: dict[str, float] = {}
        self.result: dict = {}
        self.checkpoints = CheckpointStore(config.output, keep=max(1, config.checkpoints_keep))
        self.checkpoint_uploads = BackgroundUploads()
        self.lease = Lease(config.output, wait_seconds=config.lease_wait_seconds, **pod_identity())
        self.stop = StopRequest(config.termination_grace_seconds)

    @contextlib.contextmanager
    def phase(self, name: str):
        self.observer.phase_started(name)
        logger.info("phase %s started", name)
        started = time.perf_counter()
        yield
        self.durations[name] = round(time.perf_counter() - started, 3)
        self.observer.phase_finished(name, self.durations[name])
        logger.info("phase %s done in %.1fs", name, self.durations[name])
        self.lease.renew()

    # ------------------------------------------------------------------------------------------
    def run(self) -> ExitCode:
        """Run every phase; on failure record it (result.json, metrics) and raise a JobError."""
        config = self.config
        log.configure(config.log_format, job_id=config.job_id, subject_id=config.subject_id)
        storage.set_observer(self.observer)
        storage.set_credentials_wait(config.storage_credentials_wait_seconds)
        self.result = self._result_skeleton()
        self.stop.install()
        try:
            # Before the lease and any download: an option this machine cannot run is bad input.
            check_capabilities(config)
            check_conditional_writes(config.output, OperatorPolicy.from_env())
            self.lease.acquire()
            self.lease.start_heartbeat()
            if self._already_complete():
                self.observer.phase_started("done")
                self.observer.finished(exit_code=int(ExitCode.OK))
                return ExitCode.OK
            self._check_checkpoints()
            # A full disk is worth a retry (on another node, from the last checkpoint).
            with tempfile.TemporaryDirectory(prefix="dreambooth-job-") as work, \
                    disk.writing(work, config.cache_dir):
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
        finally:
            # Before the lease goes: an upload still running writes under this run's prefix.
            self.checkpoint_uploads.close()
            self.lease.release()
            self.stop.uninstall()
        self.observer.phase_started("done")
        self.observer.finished(exit_code=int(ExitCode.OK))
        return ExitCode.OK

    def _fail(self, error: JobError) -> None:
        self._record_failure(error.exit_code, error.message)
        self.observer.phase_started("failed")
        self.observer.finished(exit_code=int(error.exit_code))

    def _already_complete(self) -> bool:
        """True when --output holds a completed run of this config (and --force is off)."""
        config = self.config
        completed = read_completed_result(config.output)
        if completed is None:
            return False
        if config.force:
            logger.warning("--force: replacing the completed run in %s", config.output)
            storage.delete(storage.join(config.output, COMPLETION_MARKER))
            self.checkpoints.delete_all()
            return False
        if completed.get("config_fingerprint") == self.fingerprint:
            logger.info("%s already holds a completed run of this config: nothing to do", config.output)
            return True
        previous = {k: v for k, v in completed.get("config", {}).items() if k not in OPERATIONAL_FIELDS}
        differing = sorted(k for k, v in redact_value(model_config(config)).items()
                           if previous.get(k) != v)
        raise InvalidInputError(
            f"--output {config.output} holds a completed run of another config (differs in: "
            f"{', '.join(differing) or 'unknown'}); pass --force to replace it or use another --output")

    def _check_checkpoints(self) -> None:
        """Fail early, before any download, if checkpoints here belong to another config."""
        existing = self.checkpoints.list()
        if not existing:
            return
        differing = conflicts(existing[0].config, self.config.to_dict())
        if not differing:
            return
        if self.config.restart:
            logger.warning("--restart: deleting checkpoints of another config in %s", self.checkpoints.root)
            self.checkpoints.delete_all()
            return
        raise InvalidInputError(
            f"checkpoints in {self.checkpoints.root} were written with another config (differs in: "
            f"{', '.join(differing)}); pass --restart to discard them or use another --output")

    # ------------------------------------------------------------------------------------------
    def _run_phases(self, work: Path) -> None:
        from dreambooth_job import data, identifiers, models, priors, sampling
        from dreambooth_job.train import Trainer

        config = self.config
        if config.evaluate:
            # Before any download or model load: a bad or disallowed --prompt-set fails at once.
            from dreambooth_job.evaluation import validate_config

            validate_config(config)
        with self.phase("download"):
            photo_dir = work / "photos"
            selected = data.download_photos(config, photo_dir)
            # Named even when validation then fails for too few photos.
            self.result["photos"]["rejected"] = [dataclasses.asdict(r) for r in selected.skipped]
        with self.phase("validate"):
            photos = data.load_subject_photos(photo_dir, config, skipped=selected.skipped)
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
            prompts = self._prompts(identifier.token)
            self.result.update(
                identifier=dataclasses.asdict(identifier), prompts=prompts,
                base_model={"source": base.source, "fingerprint": base.fingerprint,
                            "prediction_type": noise_scheduler.config.prediction_type})
        class_images = None
        if config.prior_preservation:
            with self.phase("class_images"):
                pipeline.to(devices.pick_device())
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
        with self.phase("train"):
            trainer.setup()
            resumed_from = self._resume(trainer, work / "resume", identifier.token)
            with self.stop.deferred():
                trained = trainer.train(on_step_end=self._step_hook(trainer, work, identifier.token, prompts))
            # Publishing deletes the checkpoints: no upload may still be writing one.
            self.checkpoint_uploads.wait()
            self.result["training"] = {"max_train_steps": config.max_train_steps,
                                       "resumed_from_step": resumed_from, **dataclasses.asdict(trained)}
        with self.phase("sample"):
            self._sample(trainer, work, prompts, trained.steps_done)
            trainer.save_model(work / "output" / "model")
        if config.evaluate:
            with self.phase("evaluate"):
                self.result["metrics"] = self._evaluate(trainer, base, photos.images, identifier.token)
        with self.phase("upload"):
            storage.upload_dir(work / "output" / "model", storage.join(config.output, "model"))
        self._publish()

    def _evaluate(self, trainer, base, photos, token: str) -> dict:
        """The paper's metrics for the fine-tuned model and, as the baseline row, the base model
        (reloaded from the local cache: training changed the loaded weights in place)."""
        from dreambooth_job import models, sampling
        from dreambooth_job.evaluation import Evaluator, gauges, metrics_block

        config = self.config
        evaluator = Evaluator.load(config)
        tuned = evaluator.evaluate(trainer.inference_pipeline(), photos, token, config.class_noun,
                                   label="finetuned")
        base_pipeline = sampling.fast_pipeline(models.load_pipeline(base, config.cache_dir))
        baseline = evaluator.evaluate(base_pipeline.to(devices.pick_device()), photos, token,
                                      config.class_noun, label="base")
        self.observer.evaluation({**gauges(tuned), **gauges(baseline, prefix="base_")})
        return metrics_block(baseline, tuned)

    def _prompts(self, token: str) -> dict:
        from dreambooth_job.identifiers import format_prompt

        config = self.config
        def fill(template: str) -> str:
            return format_prompt(template, token, config.class_noun)

        return {"instance": fill(config.instance_prompt), "class": fill(config.class_prompt),
                "validation": [fill(p) for p in config.validation_prompts]}

    def _resume(self, trainer, local_dir: Path, identifier: str) -> int | None:
        checkpoint = self.checkpoints.fetch_newest_valid(local_dir)
        if checkpoint is None:
            return None
        if checkpoint.manifest.get("identifier") != identifier:
            raise InvalidInputError(
                f"checkpoint {checkpoint.uri} was trained with identifier "
                f"{checkpoint.manifest.get('identifier')!r}, this run uses {identifier!r}; "
                "pass --restart to discard it")
        trainer.load_state(local_dir, checkpoint.step)
        self.observer.resumed(step=checkpoint.step)
        logger.info("resuming from checkpoint %s at step %d", checkpoint.uri, checkpoint.step)
        return checkpoint.step

    def _step_hook(self, trainer, work: Path, identifier: str, prompts: dict):
        """After each step: sample grids, checkpoint when due or asked to stop, keep the lease."""
        config = self.config
        last_checkpoint = time.monotonic()

        def upload(state_dir: Path, step: int, started: float):
            """Hash, upload and publish a saved state; inline on SIGTERM, else in the background."""
            saved = self.checkpoints.save(state_dir, step, _redacted_config(config), identifier)
            self.observer.checkpoint_written(step=step)
            logger.info("checkpoint %s written in %.1fs", saved.uri, time.monotonic() - started)
            return saved

        def on_step_end(step: int) -> None:
            nonlocal last_checkpoint
            final = step >= config.max_train_steps
            if config.sample_every and step % config.sample_every == 0 and not final:
                self._sample(trainer, work, prompts, step)
            due = (config.checkpoint_every and step % config.checkpoint_every == 0) or (
                config.checkpoint_interval_minutes
                and time.monotonic() - last_checkpoint >= config.checkpoint_interval_minutes * 60)
            if self.stop.requested or (due and not final):
                state_dir = work / "checkpoint"
                self.checkpoint_uploads.wait()  # it may still be reading the state directory
                started = time.monotonic()
                with disk.writing(state_dir):  # torch.save's error does not say "no space"
                    trainer.save_state(state_dir)
                last_checkpoint = time.monotonic()
                if self.stop.requested:
                    saved = upload(state_dir, step, started)
                    raise TerminatedError(
                        f"terminated by {self.stop.signal_name} at step {step}; checkpoint "
                        f"{saved.uri} written {self.stop.grace_seconds - self.stop.seconds_left():.1f}s "
                        "after the signal")
                logger.info("checkpoint of step %d saved in %.1fs; uploading while training goes on",
                            step, last_checkpoint - started)
                self.checkpoint_uploads.submit(lambda: upload(state_dir, step, started))
                self.lease.renew(force=True)
            self.lease.renew()

        return on_step_end

    def _sample(self, trainer, work: Path, prompts: dict, step: int) -> None:
        """A validation grid, uploaded at once so grids from before a preemption survive it."""
        from dreambooth_job import sampling

        config = self.config
        grid = sampling.validation_grid(
            trainer.inference_pipeline(), prompts["validation"], config.num_validation_images,
            seed=config.seed, resolution=config.resolution, num_inference_steps=config.sample_steps,
            guidance_scale=config.guidance_scale, batch_size=config.sample_batch_size)
        path = work / "samples" / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        storage.upload_file(path, storage.join(config.output, "samples", path.name))

    def _publish(self) -> None:
        """result.json, then the completion marker; then checkpoints are no longer needed."""
        config = self.config
        self.lease.renew(force=True)
        samples = storage.join(config.output, "samples")
        self.result["outputs"] = {
            "model": storage.join(config.output, "model"),
            "samples": [storage.join(samples, f.relative_path)
                        for f in storage.list_files(samples, [".png"])],
            "result": storage.join(config.output, RESULT_FILE)}
        self.result.update(status="succeeded", exit_code=0, finished_at=now_iso(),
                           durations_seconds=self.durations)
        write_result(config.output, self.result)
        mark_complete(config.output)
        self.checkpoints.delete_all()
        logger.info("done: model %s, samples %s, result %s", self.result["outputs"]["model"],
                    samples, self.result["outputs"]["result"])

    # ------------------------------------------------------------------------------------------
    def _result_skeleton(self) -> dict:
        config = self.config
        return {
            "schema_version": 1, "status": "failed", "exit_code": int(ExitCode.INTERNAL_ERROR),
            "error": None, "job_id": config.job_id, "subject_id": config.subject_id,
            "batch_id": config.batch_id, "package_version": __version__, "started_at": now_iso(),
            "config": _redacted_config(config), "config_fingerprint": self.fingerprint,
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
        if not self.lease.held:
            return  # the output belongs to whoever holds its lease: write nothing there
        try:
            if storage.exists(storage.join(self.config.output, COMPLETION_MARKER)):
                return  # never overwrite a completed run's result with a failed rerun's
            write_result(self.config.output, self.result)
        except Exception as exc:  # noqa: BLE001 - reporting must not mask the original failure
            logger.warning("could not write the failed result.json: %s", exc)


def _redacted_config(config: TrainConfig) -> dict:
    """The config as result.json and checkpoints record it: the logs' redaction (redaction.py)."""
    return redact_value(config.to_dict())


def run(config: TrainConfig, observer: JobObserver | None = None) -> ExitCode:
    """Run the whole job: ExitCode.OK, or a JobError carrying the exit code and a one-line reason.

    Metrics are served (and pushed) from before the first phase to after the last, and progress
    goes to a bar on a terminal or to a log line at a fixed interval otherwise.
    """
    from dreambooth_job import progress
    from dreambooth_job.metrics import PrometheusObserver

    job = Job(config, observer)
    metrics = PrometheusObserver(job.config)  # the resolved ids label every metric
    job.observer = ObserverGroup(
        metrics, progress.for_log_format(config.log_format, interval=config.progress_interval_seconds),
        job.observer)
    with metrics:
        return job.run()
