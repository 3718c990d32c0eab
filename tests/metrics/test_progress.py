"""The terminal progress bar and the interval progress log line."""

from __future__ import annotations

import io
import logging
import math

from dreambooth_job.events import TrainProgress
from dreambooth_job.progress import (
    ProgressBar,
    ProgressLog,
    for_log_format,
    format_duration,
)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def progress(step: int, max_steps: int = 100, eta: float = 50.0) -> TrainProgress:
    return TrainProgress(step=step, max_steps=max_steps, loss=0.25, instance_loss=0.2,
                         prior_loss=0.05, learning_rate=5e-6, steps_per_second=2.0,
                         images_per_second=4.0, eta_seconds=eta)


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(294) == "4:54"
    assert format_duration(3 * 3600 + 62) == "3:01:02"
    assert format_duration(math.inf) == "?"


def test_bar_shows_step_loss_rate_and_eta_and_fits_the_width():
    line = ProgressBar(io.StringIO()).render(progress(25), width=100)
    assert line.startswith("train [##########" + "." * 30 + "]")
    assert "25/100" in line and "loss 0.2500" in line and "2.00 it/s" in line and "ETA 0:50" in line
    assert len(ProgressBar(io.StringIO()).render(progress(25), width=60)) < 60


def test_bar_redraws_in_place_throttled_and_ends_its_line():
    stream, clock = Terminal(), Clock()
    bar = ProgressBar(stream, min_interval=1.0, clock=clock)
    bar.train_progress(progress(10))
    bar.train_progress(progress(11))  # within the interval: skipped
    clock.now = 2.0
    bar.train_progress(progress(12))
    bar.train_progress(progress(100, eta=0))  # the last step always draws
    bar.finished(exit_code=0)
    text = stream.getvalue()
    assert text.count("\r\x1b[K") == 3 and "11/100" not in text
    assert text.endswith("100/100 loss 0.2500 2.00 it/s ETA 0:00\n")


def test_log_records_clear_the_bar_first():
    stream = Terminal()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = ProgressBar(stream)
        bar.train_progress(progress(10))
        logging.getLogger("dreambooth_job.test").warning("checkpoint written")
        bar.finished(exit_code=0)
        assert not handler.filters
    finally:
        root.removeHandler(handler)
    assert stream.getvalue().endswith("\r\x1b[Kcheckpoint written\n")


def test_json_mode_logs_progress_at_a_fixed_interval(caplog):
    clock = Clock()
    reporter = ProgressLog(interval=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="dreambooth_job.progress"):
        for step in range(1, 101):
            clock.now = step * 1.0  # one step per second
            reporter.train_progress(progress(step, eta=100 - step))
    steps = [r.progress["step"] for r in caplog.records]
    assert steps == [1, 31, 61, 91, 100]
    assert caplog.records[-1].getMessage() == "progress step 100/100 loss 0.2500 2.00 it/s ETA 0:00"
    assert caplog.records[0].progress["eta_seconds"] == 99


def test_for_log_format_picks_the_bar_only_for_text_on_a_terminal():
    assert isinstance(for_log_format("auto", Terminal()), ProgressBar)
    assert isinstance(for_log_format("text", Terminal()), ProgressBar)
    assert isinstance(for_log_format("json", Terminal()), ProgressLog)
    assert isinstance(for_log_format("auto", io.StringIO()), ProgressLog)
    assert isinstance(for_log_format("text", io.StringIO()), ProgressLog)
