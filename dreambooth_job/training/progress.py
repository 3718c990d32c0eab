"""Training progress for people: tqdm's bar on a terminal, or, in JSON log mode, one progress log
record at a fixed interval instead of one per step.

    observer = ObserverGroup(PrometheusObserver(config), progress.for_log_format(config.log_format))

Both are `JobObserver`s fed by `train_progress`; they see only the steps the trainer reports (every
`--log-every` steps), so the bar moves in those increments.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dreambooth_job.events import JobObserver, TrainProgress

log = logging.getLogger("dreambooth_job.training.progress")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(p: TrainProgress) -> str:
    return (f"step {p.step}/{p.max_steps} loss {p.loss:.4f} {p.steps_per_second:.2f} it/s "
            f"ETA {format_duration(p.eta_seconds)}")


class ProgressBar(JobObserver):
    """tqdm's bar, `train:  15%|###      | 120/800 [00:52<04:54, 2.31step/s, loss=0.1234]`.

    While it is shown, the root logger's console handler goes through tqdm's logging redirect
    (`logging_redirect_tqdm`): log lines print above the bar, which redraws below them. The bar
    starts at the first step reported (the step resumed from, on a resumed run) and ends with the
    train phase.
    """

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1):
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._bar: tqdm | None = None
        self._redirect = contextlib.ExitStack()

    def train_progress(self, progress: TrainProgress) -> None:
        if self._bar is None:
            # Entered here, not at construction: the job configures logging after building its
            # observers, and the redirect takes over the handler it finds then.
            self._redirect.enter_context(logging_redirect_tqdm())
            self._bar = tqdm(total=progress.max_steps, initial=progress.step, desc="train",
                             unit="step", file=self.stream, dynamic_ncols=True,
                             mininterval=self.min_interval, postfix={"loss": f"{progress.loss:.4f}"})
            return
        self._bar.set_postfix(loss=f"{progress.loss:.4f}", refresh=False)
        self._bar.update(progress.step - self._bar.n)  # redraws at most every min_interval

    def phase_started(self, phase: str) -> None:
        self.close()

    def finished(self, *, exit_code: int) -> None:
        self.close()

    def close(self) -> None:
        """End the bar's line and give logging its handler back."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._redirect.close()


class ProgressLog(JobObserver):
    """One `progress` log record per `interval` seconds of training, plus the last step.

    The record's message is human-readable; its `progress` attribute holds the numbers for a JSON
    formatter that wants them as fields.
    """

    def __init__(self, interval: float = 30.0, logger: logging.Logger = log, clock=time.monotonic):
        self.interval, self.logger, self.clock = interval, logger, clock
        self._last = -math.inf

    def train_progress(self, progress: TrainProgress) -> None:
        now = self.clock()
        if now - self._last < self.interval and progress.step < progress.max_steps:
            return
        self._last = now
        fields = {"step": progress.step, "max_steps": progress.max_steps, "loss": progress.loss,
                  "instance_loss": progress.instance_loss, "prior_loss": progress.prior_loss,
                  "learning_rate": progress.learning_rate,
                  "steps_per_second": progress.steps_per_second,
                  "images_per_second": progress.images_per_second,
                  "eta_seconds": progress.eta_seconds if math.isfinite(progress.eta_seconds) else None}
        self.logger.info("progress %s", describe(progress), extra={"progress": fields})


def for_log_format(log_format: str, stream: TextIO | None = None,
                   interval: float = 30.0) -> JobObserver:
    """The bar for people at a terminal (text logs on a TTY), the interval log line otherwise."""
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    if log_format == "text" and stream.isatty():
        return ProgressBar(stream)
    return ProgressLog(interval)
