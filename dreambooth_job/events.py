"""What the job reports while it runs. The job calls a `JobObserver`; metrics and logging implement it.

Keeping this seam small means the training code never imports prometheus-client, and a caller
embedding the job (tests, `bench`) can pass an observer of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PHASES = ("download", "validate", "load_model", "class_images", "train", "sample", "evaluate",
          "upload", "done", "failed")


@dataclass(frozen=True)
class TrainProgress:
    step: int
    max_steps: int
    loss: float
    instance_loss: float
    prior_loss: float
    learning_rate: float
    steps_per_second: float
    images_per_second: float
    eta_seconds: float


class JobObserver:
    """No-op base: override what you need. Every method must be cheap and must not raise."""

    def phase_started(self, phase: str) -> None: ...

    def phase_finished(self, phase: str, seconds: float) -> None: ...

    def train_progress(self, progress: TrainProgress) -> None: ...

    def class_images(self, *, generated: int, reused: int) -> None: ...

    def transfer(self, *, direction: str, num_bytes: int, objects: int) -> None:
        """direction is "download" or "upload"."""

    def storage_retry(self) -> None: ...

    def checkpoint_written(self, *, step: int) -> None: ...

    def resumed(self, *, step: int) -> None: ...

    def evaluation(self, metrics: Mapping[str, float | None]) -> None: ...

    def notify_failed(self) -> None:
        """The completion call (outputs/notify.py) got no 2xx answer within its budget."""

    def finished(self, *, exit_code: int) -> None: ...


class ObserverGroup(JobObserver):
    """Fan each event out to several observers, in order."""

    def __init__(self, *observers: JobObserver):
        self.observers = observers

    def phase_started(self, phase: str) -> None:
        for o in self.observers:
            o.phase_started(phase)

    def phase_finished(self, phase: str, seconds: float) -> None:
        for o in self.observers:
            o.phase_finished(phase, seconds)

    def train_progress(self, progress: TrainProgress) -> None:
        for o in self.observers:
            o.train_progress(progress)

    def class_images(self, *, generated: int, reused: int) -> None:
        for o in self.observers:
            o.class_images(generated=generated, reused=reused)

    def transfer(self, *, direction: str, num_bytes: int, objects: int) -> None:
        for o in self.observers:
            o.transfer(direction=direction, num_bytes=num_bytes, objects=objects)

    def storage_retry(self) -> None:
        for o in self.observers:
            o.storage_retry()

    def checkpoint_written(self, *, step: int) -> None:
        for o in self.observers:
            o.checkpoint_written(step=step)

    def resumed(self, *, step: int) -> None:
        for o in self.observers:
            o.resumed(step=step)

    def evaluation(self, metrics: Mapping[str, float | None]) -> None:
        for o in self.observers:
            o.evaluation(metrics)

    def notify_failed(self) -> None:
        for o in self.observers:
            o.notify_failed()

    def finished(self, *, exit_code: int) -> None:
        for o in self.observers:
            o.finished(exit_code=exit_code)
