"""One redaction for everything written (redaction.py), and URL credentials refused as options."""

import json
import logging

import pytest
from click.testing import CliRunner

from dreambooth_job import log
from dreambooth_job.cli import main
from dreambooth_job.config import field_types, introspection
from dreambooth_job.config import train_config as cfg
from dreambooth_job.config.option_fields import place_of
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.metrics import JobMetrics, grouping_key
from dreambooth_job.redaction import redact, redact_value
from dreambooth_job.training.checkpoint import MANIFEST, TRAINER_STATE, CheckpointStore

REQUIRED = {"instance_data": "s3://b/photos/", "class_noun": "dog", "output": "s3://b/out/"}
SIGNATURE = "f00dfeedc0ffee0123456789abcdef"
TOKEN = "FwoGZXIvYXdzEFAKESESSIONTOKEN"
PRESIGNED = (f"https://bucket.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             f"&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261130%2Fus-east-1%2Fs3%2Faws4_request"
             f"&X-Amz-Security-Token={TOKEN}&X-Amz-Signature={SIGNATURE}")


@pytest.mark.parametrize("text, secrets, kept", [
    ("https://user:token@host/x", ["user:token"], ["https://", "@host/x"]),
    ("https://ghp_tokenonly@github.com/o/r", ["ghp_tokenonly"], ["@github.com/o/r"]),
    ("push to https://u:p@ss:w0rd@gw:9091 failed", ["p@ss", "w0rd"], ["@gw:9091 failed"]),
    (PRESIGNED, [SIGNATURE, TOKEN, "AKIAIOSFODNN7EXAMPLE"], ["X-Amz-Algorithm=AWS4-HMAC-SHA256"]),
    (PRESIGNED.lower(), [SIGNATURE, TOKEN.lower(), "akiaiosfodnn7example"], ["x-amz-signature="]),
    ("s3://b/k?Signature=abcSIG&AWSAccessKeyId=KEYID123&Expires=1", ["abcSIG", "KEYID123"],
     ["Expires=1"]),
    ("gs://b/o?X-Goog-Signature=gsig99", ["gsig99"], ["X-Goog-Signature="]),
    ("key AKIAIOSFODNN7EXAMPLE in a message", ["AKIAIOSFODNN7EXAMPLE"], ["in a message"]),
])
def test_redact_removes_credentials_and_keeps_the_rest(text, secrets, kept):
    redacted = redact(text)
    for secret in secrets:
        assert secret not in redacted
    for part in kept:
        assert part in redacted
    assert "[REDACTED]" in redacted


@pytest.mark.parametrize("text", ["s3://runs/dog-42/model", "a {identifier} dog at max_token=5",
                                  "/data/photos/dog@home/", "http://pushgateway:9091"])
def test_redact_leaves_ordinary_text_alone(text):
    assert redact(text) == text


def test_redact_removes_credential_values_of_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-from-the-pod")
    assert redact("boto said session-token-from-the-pod") == "boto said [REDACTED]"


def test_redact_value_walks_nested_values():
    value = {"config": {"output": f"s3://b/o?X-Amz-Signature={SIGNATURE}", "steps": 3,
                        "prompts": [f"https://a:{SIGNATURE}@h/"]}, "ok": None}
    assert SIGNATURE not in json.dumps(redact_value(value))
    assert redact_value(value)["config"]["steps"] == 3 and redact_value(value)["ok"] is None


def test_log_lines_use_the_same_redaction(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        log.configure("json", job_id="j", subject_id="s")
        logging.getLogger("dreambooth_job").error("upload to %s failed", PRESIGNED)
    finally:  # the handler writes to this test's captured stderr: later tests must not inherit it
        root.handlers[:], root.level = saved[0], saved[1]
    line = capsys.readouterr().err
    assert SIGNATURE not in line and TOKEN not in line and "X-Amz-Signature=[REDACTED]" in line
    assert log.redact is redact


def test_checkpoint_manifest_and_trainer_state_are_redacted(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "weights.bin").write_bytes(b"w")
    store = CheckpointStore(str(tmp_path / "out"), keep=1)
    config = {"output": f"{tmp_path}/out?X-Amz-Signature={SIGNATURE}", "base_model": PRESIGNED}
    saved = store.save(state, 5, config, "sks")
    written = (tmp_path / "out" / "checkpoints" / "step-000005")
    for name in (MANIFEST, TRAINER_STATE):
        assert SIGNATURE not in (written / name).read_text()
    assert SIGNATURE not in json.dumps(saved.manifest)


def test_metric_labels_and_push_group_are_redacted():
    from prometheus_client import generate_latest

    metrics = JobMetrics("dog-42", f"https://u:{SIGNATURE}@h/dog", f"Signature={SIGNATURE}")
    exposition = generate_latest(metrics.registry).decode()
    assert 'job_id="dog-42"' in exposition and SIGNATURE not in exposition
    assert SIGNATURE not in json.dumps(grouping_key(f"Signature={SIGNATURE}", f"https://{SIGNATURE}@h"))


@pytest.mark.parametrize("option", [f.name for f in introspection.fields() if place_of(f)])
def test_a_url_with_credentials_is_refused_as_any_place_option(option):
    with pytest.raises(InvalidInputError) as error:
        cfg.TrainConfig(**{**REQUIRED, option: "https://trainer:hunter2-secret@host:9091/x"})
    message = str(error.value)
    assert field_types.flag_name(option) in message and "Secret" in message and "environment" in message
    assert "hunter2-secret" not in message and "\n" not in message


def test_train_refuses_a_pushgateway_with_credentials_in_one_line_without_the_secret(tmp_path):
    result = CliRunner().invoke(main, [
        "train", "--instance-data", str(tmp_path / "photos"), "--class-noun", "dog",
        "--output", str(tmp_path / "out"),
        "--pushgateway", "https://admin:hunter2-secret@pushgateway:9091"], env={})
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "hunter2-secret" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--pushgateway" in lines[0]


def test_cli_error_messages_pass_through_the_redaction(tmp_path):
    # A config file that cannot be read names its path: a presigned-looking path loses its signature.
    missing = tmp_path / f"job.yaml?X-Amz-Signature={SIGNATURE}"
    result = CliRunner().invoke(main, ["train", "--config", str(missing)], env={})
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert SIGNATURE not in result.output and "X-Amz-Signature=[REDACTED]" in result.output
