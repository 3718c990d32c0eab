"""--notify-url: one signed POST per run whose outcome is final, to a real HTTP receiver on loopback;
a receiver that is down or failing never changes the run's outcome.

Loopback is an internal address, which the job refuses unless the operator allows it: every test
here that calls a receiver allows it the documented way, DREAMBOOTH_OPERATOR_ALLOW_PRIVATE_NOTIFY
(test_notify_destinations.py: what is refused without it)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreambooth_job import job
from dreambooth_job.cli import main
from dreambooth_job.config import sources as config_sources
from dreambooth_job.config.operator_policy import ALLOW_PRIVATE_NOTIFY_ENV
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.events import JobObserver
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.outputs import notify

TINY = ["--resolution", "64", "--max-train-steps", "2", "--no-prior-preservation",
        "--sample-steps", "1", "--num-validation-images", "1", "--log-every", "1",
        "--validation-prompt", "a {identifier} {class_noun}", "--metrics-port", "0",
        "--checkpoint-every", "0", "--log-format", "json"]
KEY = "notify-signing-key-0123456789"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
USER_GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"


class Receiver:
    """An HTTP server on loopback that records every request and answers `status`."""

    def __init__(self, status: int = 204, location: str | None = None, host: str = "127.0.0.1"):
        self.status, self.location, self.requests = status, location, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((self.headers, body))  # names case-insensitive
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/dreambooth"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def allow_internal(monkeypatch):
    """The operator lets --notify-url reach internal addresses (the receivers here are on loopback)."""
    monkeypatch.setenv(ALLOW_PRIVATE_NOTIFY_ENV, "true")


@pytest.fixture
def receiver(allow_internal):
    made = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def down_url(allow_internal) -> str:
    """A loopback URL nobody listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks"


class Recorder(JobObserver):
    def __init__(self):
        self.notify_failures = 0

    def notify_failed(self):
        self.notify_failures += 1


def train(*args):
    return CliRunner().invoke(main, ["train", *TINY, *args], catch_exceptions=False)


def run_args(photo_dir, tiny_model, tmp_path, output):
    return ["--instance-data", str(photo_dir), "--class-noun", "dog", "--base-model", str(tiny_model),
            "--output", str(output), "--cache-dir", str(tmp_path / "cache")]


def verified(headers, body: bytes, key: str = KEY) -> bool:
    """What the user guide tells a receiver to do: its `verify`, run as printed there."""
    section = USER_GUIDE.read_text().split("## Completion call", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(code, namespace)
    return namespace["verify"](key.encode(), headers, body)


def test_each_run_posts_its_outcome_once_signed_and_without_credentials(
        photo_dir, tiny_model, tmp_path, receiver, monkeypatch):
    hook = receiver()
    monkeypatch.setenv("NOTIFY_KEY", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    output = tmp_path / "runs" / "dog?X-Amz-Signature=0123456789abcdef"
    args = [*run_args(photo_dir, tiny_model, tmp_path, output), "--notify-url", hook.url,
            "--notify-secret-env", "NOTIFY_KEY", "--job-id", "dog-1", "--subject-id", "dog"]
    outcome = train(*args)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    assert len(hook.requests) == 1
    headers, body = hook.requests[0]
    assert verified(headers, body)
    assert not verified(headers, body.replace(b"succeeded", b"failed!!!"))
    assert not verified(headers, body, key="another-key")
    sent = json.loads(body)
    assert sent["status"] == "succeeded" and sent["exit_code"] == 0 and sent["error"] is None
    assert (sent["job_id"], sent["subject_id"]) == ("dog-1", "dog")
    assert sent["output"].endswith("X-Amz-Signature=[REDACTED]") and sent["result"]
    assert (output / "result.json").exists()
    for secret in (KEY, AWS_SECRET, "0123456789abcdef"):
        assert secret.encode() not in body
    # The same config again: the output holds a completed run, a second run, a second call.
    assert train(*args).exit_code == ExitCode.OK
    assert len(hook.requests) == 2
    assert hook.requests[1][0]["X-DreamBooth-Delivery"] != headers["X-DreamBooth-Delivery"]


def tiny_config(photo_dir, tiny_model, tmp_path, **options) -> TrainConfig:
    return config_sources.resolve_config(flags={
        "instance_data": str(photo_dir), "class_noun": "dog", "base_model": str(tiny_model),
        "output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "resolution": 64,
        "max_train_steps": 1, "prior_preservation": False, "sample_steps": 1,
        "num_validation_images": 1, "metrics_port": 0, "checkpoint_every": 0, **options})


def test_a_receiver_answering_500_is_retried_then_given_up_on_and_the_run_succeeds(
        photo_dir, tiny_model, tmp_path, receiver, capsys):
    hook = receiver(status=500)
    observer = Recorder()
    config = tiny_config(photo_dir, tiny_model, tmp_path, notify_url=hook.url)
    assert job.run(config, observer) == ExitCode.OK
    assert len(hook.requests) == notify.ATTEMPTS
    assert len({h["X-DreamBooth-Delivery"] for h, _ in hook.requests}) == 1  # one delivery, retried
    assert observer.notify_failures == 1
    assert f"completion call failed after {notify.ATTEMPTS} attempt(s): HTTP 500" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "result.json").read_text())["status"] == "succeeded"


def test_a_receiver_that_is_down_never_fails_the_run(photo_dir, tiny_model, tmp_path, down_url,
                                                      capsys):
    observer = Recorder()
    config = tiny_config(photo_dir, tiny_model, tmp_path, notify_url=down_url)
    assert job.run(config, observer) == ExitCode.OK
    assert observer.notify_failures == 1
    assert f"completion call failed after {notify.ATTEMPTS} attempt(s)" in capsys.readouterr().err


def test_bad_input_is_final_and_posted_with_its_error_line(photo_dir, tiny_model, tmp_path, receiver):
    hook = receiver()
    outcome = train(*run_args(photo_dir, tiny_model, tmp_path, tmp_path / "out"),
                    "--min-images", "99", "--notify-url", hook.url)
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    assert len(hook.requests) == 1
    headers, body = hook.requests[0]
    sent = json.loads(body)
    assert sent["status"] == "failed" and sent["exit_code"] == 2
    assert "99" in sent["error"] and "\n" not in sent["error"]
    assert sent["result"].endswith("/out/result.json")
    assert "X-DreamBooth-Signature" not in headers  # no key, no signature


@pytest.mark.parametrize("code", [ExitCode.RETRYABLE, ExitCode.TERMINATED, ExitCode.INTERNAL_ERROR])
def test_an_exit_another_attempt_may_follow_calls_nobody(code, receiver, tmp_path):
    hook = receiver()
    config = TrainConfig(output=str(tmp_path), notify_url=hook.url, job_id="j", subject_id="s")
    notifier = notify.Notifier.for_run(config, {ALLOW_PRIVATE_NOTIFY_ENV: "true"})
    notify.announce(notifier, Recorder(), config, code, "preempted")
    assert hook.requests == []
    notify.announce(notifier, Recorder(), config, ExitCode.INVALID_INPUT, "bad photos")
    assert len(hook.requests) == 1


def test_a_redirect_is_not_followed(receiver, tmp_path):
    elsewhere = receiver()
    hook = receiver(status=307, location=elsewhere.url)
    config = TrainConfig(output=str(tmp_path), notify_url=hook.url, job_id="j", subject_id="s")
    observer = Recorder()
    notify.announce(notify.Notifier(hook.url, backoff=(0.0,), public_only=False), observer, config,
                    ExitCode.OK)
    assert len(hook.requests) == 1 and elsewhere.requests == []
    assert observer.notify_failures == 1


def test_a_host_the_operator_does_not_allow_exits_2_before_any_work(
        photo_dir, tiny_model, tmp_path, receiver, monkeypatch):
    hook = receiver()
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_ALLOWED_HOSTS", "hooks.example,pushgateway.monitoring")
    output = tmp_path / "out"
    outcome = train(*run_args(photo_dir, tiny_model, tmp_path, output), "--notify-url", hook.url)
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "--notify-url" in errors[0] and "DREAMBOOTH_OPERATOR_ALLOWED_HOSTS" in errors[0]
    assert hook.requests == [] and not output.exists()


def test_a_signing_key_variable_that_is_unset_exits_2_before_any_work(
        photo_dir, tiny_model, tmp_path, receiver, monkeypatch):
    hook = receiver()
    monkeypatch.delenv("NOTIFY_KEY", raising=False)
    output = tmp_path / "out"
    outcome = train(*run_args(photo_dir, tiny_model, tmp_path, output), "--notify-url", hook.url,
                    "--notify-secret-env", "NOTIFY_KEY")
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    assert "error: --notify-secret-env NOTIFY_KEY: the variable is not set" in outcome.output
    assert hook.requests == [] and not output.exists()


@pytest.mark.parametrize(("options", "match"), [
    ({"notify_url": "ftp://hooks.example/x"}, "must be an http:// or https:// URL"),
    ({"notify_url": "hooks.example/x"}, "must be an http:// or https:// URL"),
    ({"notify_url": "http://[::1/x"}, "must be an http:// or https:// URL"),
    ({"notify_url": "https://user:pw@hooks.example/"}, "must not carry credentials"),
    ({"notify_secret_env": "KEY"}, "no effect without --notify-url"),
    ({"notify_url": "https://h/", "notify_secret_env": "A-B"}, "environment variable name"),
    ({"notify_url": "https://h/", "notify_secret_env": "AWS_SECRET_ACCESS_KEY"}, "of its own"),
    ({"notify_url": "https://h/", "notify_secret_env": "DREAMBOOTH_OPERATOR_ALLOWED_HOSTS"},
     "of its own"),
])
def test_notify_options_are_checked_at_validation(options, match):
    with pytest.raises(InvalidInputError, match=match) as error:
        TrainConfig(**options)
    assert "pw" not in error.value.message and "\n" not in error.value.message


def test_a_given_up_call_is_counted_in_the_jobs_metrics():
    from dreambooth_job.metrics import PrometheusObserver

    observer = PrometheusObserver(TrainConfig(metrics_port=0, job_id="j", subject_id="dog"))
    observer.notify_failed()
    assert b'dreambooth_notify_failures_total{batch_id="",job_id="j",subject_id="dog"} 1.0' in (
        observer.exposition())
