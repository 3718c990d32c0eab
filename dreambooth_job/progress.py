"""Training progress for people: a live bar on a terminal, or, in JSON log mode, one progress log
record at a fixed interval instead of one per step.

    observer = ObserverGroup(PrometheusObserver(config), progress.for_log_format(config.log_format))

Both are `JobObserver`s fed by `train_progress`; they see only the steps the trainer reports (every
`--log-every` steps), so the bar moves in those increments.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from typing import TextIO

from dreambooth_job.events import JobObserver, TrainProgress

log = logging.getLogger("dreambooth_job.progress")


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
    """`train [#####.....] 120/800 loss 0.1234 2.31 it/s ETA 4:54`, redrawn in place.

    Log records written to the same stream clear the bar first (through a filter on the logging
    handlers), so log lines and the bar never share a line; the next step redraws it.
    """

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1,
                 clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.min_interval, self.clock = min_interval, clock
        self._drawn = False
        self._last_draw = -math.inf
        self._filtered: list[logging.Handler] = []

    def render(self, p: TrainProgress, width: int) -> str:
        counts = f" {p.step}/{p.max_steps}"
        tail = (f" loss {p.loss:.4f} {p.steps_per_second:.2f} it/s "
                f"ETA {format_duration(p.eta_seconds)}")
        bar_width = max(10, min(40, width - len("train []") - len(counts) - len(tail) - 1))
        done = int(bar_width * min(1.0, p.step / p.max_steps)) if p.max_steps else 0
        return f"train [{'#' * done}{'.' * (bar_width - done)}]{counts}{tail}"[: width - 1]

    def train_progress(self, progress: TrainProgress) -> None:
        now = self.clock()
        if now - self._last_draw < self.min_interval and progress.step < progress.max_steps:
            return
        self._last_draw = now
        self._attach_to_log_handlers()
        width = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r\x1b[K" + self.render(progress, width))
        self.stream.flush()
        self._drawn = True

    def phase_started(self, phase: str) -> None:
        self._end_line()

    def finished(self, *, exit_code: int) -> None:
        self._end_line()
        for handler in self._filtered:
            handler.removeFilter(self._clear_for_log)
        self._filtered.clear()

    def _end_line(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _clear_for_log(self, record: logging.LogRecord) -> bool:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        return True

    def _attach_to_log_handlers(self) -> None:
        # Looked up at draw time: the job configures logging after building its observers.
        for handler in logging.getLogger().handlers:
            if getattr(handler, "stream", None) is self.stream and handler not in self._filtered:
                handler.addFilter(self._clear_for_log)
                self._filtered.append(handler)


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
