"""No secret of the tenant's or the pod's reaches what the job writes: result.json, logs, errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode

TINY = ["--resolution", "64", "--max-train-steps", "2", "--no-prior-preservation",
        "--sample-steps", "1", "--num-validation-images", "1", "--log-every", "1",
        "--validation-prompt", "a {identifier} {class_noun}", "--metrics-port", "0",
        "--checkpoint-every", "0", "--log-format", "json"]
SIGNATURE = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEFAKESESSIONTOKEN"
FAKE_TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImZha2UifQ.eyJzdWIiOiJzeXN0ZW0ifQ.fake-signature"


def train(*args):
    return CliRunner().invoke(main, ["train", *TINY, *args], catch_exceptions=False)


def test_a_presigned_style_output_leaves_no_signature_in_result_json_or_logs(
        photo_dir, tiny_model, tmp_path):
    # A local directory whose name carries a presigned URL's query string, as a tenant's
    # copy-pasted --output would.
    output = tmp_path / "runs" / (f"dog?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE&X-Amz-Security-Token="
                                  f"{SESSION_TOKEN}&X-Amz-Signature={SIGNATURE}")
    outcome = train("--instance-data", str(photo_dir), "--class-noun", "dog",
                    "--base-model", str(tiny_model), "--output", str(output),
                    "--cache-dir", str(tmp_path / "cache"))
    assert outcome.exit_code == ExitCode.OK, outcome.output
    written = (output / "result.json").read_text()
    result = json.loads(written)
    assert result["status"] == "succeeded"
    for secret in (SIGNATURE, SESSION_TOKEN, "AKIAIOSFODNN7EXAMPLE"):
        assert secret not in written
        assert secret not in outcome.output
    assert "X-Amz-Signature=[REDACTED]" in result["config"]["output"]


def test_a_local_prompt_set_outside_the_operators_dirs_exits_2_before_any_work(
        photo_dir, tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS", raising=False)
    token = tmp_path / "var" / "run" / "secrets" / "token"  # a mounted web-identity token
    token.parent.mkdir(parents=True)
    token.write_text(FAKE_TOKEN + "\n")
    output = tmp_path / "out"
    outcome = train("--instance-data", str(photo_dir), "--class-noun", "dog",
                    "--base-model", str(tiny_model), "--output", str(output),
                    "--cache-dir", str(tmp_path / "cache"), "--evaluate", "--prompt-set", str(token))
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    assert FAKE_TOKEN not in outcome.output
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(token) in errors[0]
    assert "DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS" in errors[0]
    written = (output / "result.json").read_text()
    assert FAKE_TOKEN not in written
    failed = json.loads(written)
    assert failed["status"] == "failed" and failed["exit_code"] == ExitCode.INVALID_INPUT
    assert "download" not in failed["durations_seconds"]  # refused before any download
