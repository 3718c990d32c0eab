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

    def finished(self, *, exit_code: int) -> None: ...


class ObserverGroup(JobObserver):
    """Fan one event out to several observers."""

    def __init__(self, *observers: JobObserver):
        self.observers = observers

    def __getattribute__(self, name: str):
        if name.startswith("_") or name == "observers":
            return object.__getattribute__(self, name)
        observers = object.__getattribute__(self, "observers")
        return lambda *args, **kwargs: [getattr(o, name)(*args, **kwargs) for o in observers] and None
