"""SIGTERM before training and the termination log, against the real CLI in a child process.

The job is PID 1 in its container: a signal without a handler is ignored there, so SIGTERM must
be handled from the CLI's first moment. A child here is not PID 1, so without a handler it dies
by the signal (returncode -15) where the job must exit with ExitCode.TERMINATED (143).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreambooth_job import termination
from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.termination import TERMINATION_LOG_ENV, StopRequest

REPO = Path(__file__).resolve().parents[2]


def start_blocked_in_startup(tmp_path: Path, prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
    """`dreambooth-job train --config FIFO`: the CLI blocks reading the FIFO, after `main` started
    and before the job (and its own handler) runs. Returns once the child has the FIFO open."""
    fifo, log = tmp_path / "config.yaml", tmp_path / "termination-log"
    os.mkfifo(fifo)
    env = {**os.environ, TERMINATION_LOG_ENV: str(log),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    child = subprocess.Popen([*prefix, sys.executable, "-m", "dreambooth_job.cli", "train",
                              "--config", str(fifo)], env=env, stderr=subprocess.PIPE, text=True)
    # Opening the write end returns when the child opened the read end: no sleep, no polling.
    writer = os.open(fifo, os.O_WRONLY)
    child.writer = writer  # closed by the caller once the signal was sent
    return child, log


def test_sigterm_during_startup_exits_with_the_preemption_code(tmp_path):
    child, log = start_blocked_in_startup(tmp_path)
    try:
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
    finally:
        os.close(child.writer)
        child.kill()
    assert child.returncode == ExitCode.TERMINATED, stderr
    assert "terminated by SIGTERM outside training" in stderr
    assert log.read_text() == "terminated by SIGTERM outside training: nothing to checkpoint\n"


def _pid_namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run(
        [unshare, "--pid", "--fork", "--kill-child", "true"], capture_output=True,
        check=False).returncode == 0


@pytest.mark.skipif(not _pid_namespaces_work(), reason="needs `unshare --pid` (root or user namespaces)")
def test_sigterm_reaches_the_job_as_pid_1(tmp_path):
    """As in a container: PID 1 of its own PID namespace, where an unhandled SIGTERM is ignored."""
    wrapper, log = start_blocked_in_startup(
        tmp_path, prefix=(shutil.which("unshare"), "--pid", "--fork", "--kill-child"))
    try:
        children = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read_text().split()
        (job,) = children
        nspid = next(line for line in Path(f"/proc/{job}/status").read_text().splitlines()
                     if line.startswith("NSpid:"))
        assert nspid.split()[-1] == "1"  # its pid inside its namespace
        os.kill(int(job), signal.SIGTERM)
        _, stderr = wrapper.communicate(timeout=60)
    finally:
        os.close(wrapper.writer)
        wrapper.kill()
    assert wrapper.returncode == ExitCode.TERMINATED, stderr
    assert log.read_text().startswith("terminated by SIGTERM")


def test_an_error_is_written_to_the_termination_log_as_one_line(tmp_path):
    log = tmp_path / "termination-log"
    outcome = CliRunner().invoke(main, ["train", "--class-noun", "dog", "--output", str(tmp_path / "out")],
                                 env={TERMINATION_LOG_ENV: str(log)})
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    message = log.read_text()
    assert message.count("\n") == 1 and "--instance-data" in message
    assert f"error: {message}" in outcome.output


def test_default_path_is_written_only_where_a_kubelet_mounted_it(tmp_path, monkeypatch):
    monkeypatch.delenv(TERMINATION_LOG_ENV, raising=False)
    mounted = tmp_path / "termination-log"
    monkeypatch.setattr(termination, "DEFAULT_TERMINATION_LOG", str(mounted))
    termination.write_termination_message("boom")
    assert not mounted.exists()  # outside a pod: nothing created
    mounted.write_text("")  # the kubelet creates the file before the container starts
    termination.write_termination_message("first line\nsecond " + "x" * 5000)
    written = mounted.read_bytes()
    assert len(written) <= termination.MAX_TERMINATION_MESSAGE_BYTES
    assert written.startswith(b"first line second x") and written.endswith(b"...\n")
    monkeypatch.setenv(TERMINATION_LOG_ENV, "")  # set empty: off
    termination.write_termination_message("not written")
    assert not mounted.read_text().startswith("not written")


def test_the_jobs_handler_takes_over_and_hands_back():
    restore = termination.exit_on_sigterm()
    try:
        early = signal.getsignal(signal.SIGTERM)
        stop = StopRequest(grace_seconds=5)
        stop.install()
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop.uninstall()
        assert signal.getsignal(signal.SIGTERM) is early
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is not early


def test_the_stop_request_is_installed_for_a_block_and_handed_back_after_an_error():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest(grace_seconds=5)
    with pytest.raises(RuntimeError), stop.installed():
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        raise RuntimeError("a phase failed")
    assert signal.getsignal(signal.SIGTERM) is before
