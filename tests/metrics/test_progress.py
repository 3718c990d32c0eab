"""tqdm's progress bar on a terminal (a real pseudo-terminal) and the interval progress log line
off one."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import math
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import tty

import pytest

from dreambooth_job import log
from dreambooth_job.events import TrainProgress
from dreambooth_job.training.progress import ProgressBar, ProgressLog, for_log_format, format_duration


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


@contextlib.contextmanager
def pseudo_terminal():
    """(stream, read): a text stream on the slave side of a raw pty, and what reached the master."""
    master, slave = pty.openpty()
    tty.setraw(slave)  # no "\n" -> "\r\n": the bytes as written
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
    stream = os.fdopen(slave, "w", buffering=1)
    received = bytearray()

    def read() -> str:
        stream.flush()
        while select.select([master], [], [], 0)[0]:  # what the kernel holds, without waiting
            received.extend(os.read(master, 65536))
        return received.decode()

    try:
        yield stream, read
    finally:
        stream.close()
        os.close(master)


@pytest.fixture
def root_logging():
    """Give back the root logger's handlers and level that log.configure replaces."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:], root.level = handlers, level


def test_on_a_terminal_the_bar_is_tqdms_and_log_lines_print_above_it(monkeypatch, root_logging):
    with pseudo_terminal() as (terminal, read):
        monkeypatch.setattr(sys, "stderr", terminal)
        log.configure("auto", job_id="dog-1", subject_id="dog")  # text: stderr is a terminal
        console = root_logging.handlers[0]
        bar = for_log_format("auto")
        assert isinstance(bar, ProgressBar)
        bar.train_progress(progress(10, max_steps=20))
        assert root_logging.handlers != [console]  # tqdm's redirect holds the console
        logging.getLogger("dreambooth_job").info("checkpoint written")
        bar.train_progress(progress(20, max_steps=20))
        bar.phase_started("sample")
        assert root_logging.handlers == [console]
        logging.getLogger("dreambooth_job").info("phase sample started")
        text = read()
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]  # what stays on screen
    assert re.fullmatch(r"train: 100%\|█+\| 20/20 \[.*step/s, loss=0\.2500\]", lines[-3]), lines
    written = next(i for i, line in enumerate(lines) if line.endswith("checkpoint written"))
    assert "[job_id=dog-1 subject_id=dog]" in lines[written] and written < len(lines) - 3
    assert lines[-2].endswith("phase sample started") and lines[-1] == ""
    assert "{" not in text  # no JSON on a terminal


def test_a_resumed_run_starts_the_bar_at_its_step(root_logging):
    with pseudo_terminal() as (terminal, read):
        bar = ProgressBar(terminal)
        bar.train_progress(progress(400, max_steps=800))
        bar.finished(exit_code=0)
        assert "400/800" in read()


def test_json_mode_logs_progress_at_a_fixed_interval(caplog):
    clock = Clock()
    reporter = ProgressLog(interval=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="dreambooth_job.training.progress"):
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


@pytest.mark.slow
def test_train_on_a_terminal_shows_tqdms_bar_between_text_log_lines(photo_dir, tiny_model, tmp_path):
    """The real command with its stderr on a pseudo-terminal: text logs and tqdm's bar."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "dreambooth_job.cli", "train", "--instance-data", str(photo_dir),
         "--class-noun", "dog", "--base-model", str(tiny_model), "--output", str(tmp_path / "out"),
         "--cache-dir", str(tmp_path / "cache"), "--resolution", "64", "--max-train-steps", "4",
         "--log-every", "1", "--no-prior-preservation", "--sample-steps", "1",
         "--num-validation-images", "1", "--metrics-port", "0", "--checkpoint-every", "0"],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    received = bytearray()
    while True:  # drain the terminal until the process closes its side
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer is gone
            break
        if not chunk:
            break
        received.extend(chunk)
    os.close(master)
    assert process.wait(timeout=300) == 0, received.decode()[-2000:]
    screen = [line.rsplit("\r", 1)[-1] for line in received.decode().replace("\r\n", "\n").split("\n")]
    assert any(re.fullmatch(r"train: 100%\|█+\| 4/4 \[.*step/s, loss=\d\.\d{4}\]", line)
               for line in screen), screen
    assert any(line.endswith("phase train started") for line in screen)
    assert not any(line.startswith("{") for line in screen)  # JSON only off a terminal
