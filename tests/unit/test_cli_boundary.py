"""Every command's errors end in the one boundary (cli_boundary.py): exit code, ONE `error:` line on
stderr, the same message in the termination log, redacted."""

from pathlib import Path

import pytest
from click.testing import CliRunner

import dreambooth_job
from dreambooth_job.cli import main
from dreambooth_job.config import sources as config_sources
from dreambooth_job.termination import TERMINATION_LOG_ENV

# One bad input per command, each refused before any download, model or cluster: (args, what the
# error line must name).
BAD_INPUT = {
    "train": (["--instance-data", "ftp://host/dog/", "--class-noun", "dog", "--output", "{tmp}/o"],
              "ftp://host/dog/"),
    "demo": (["--max-train-steps", "many"], "--max-train-steps"),
    "config": (["--config", "{tmp}/missing.yaml"], "missing.yaml"),
    "evaluate": (["--model", "{tmp}/model", "--class-noun", "dog"], "--instance-data"),
    "bench": (["--steps", "0"], "--steps"),
    "toy-world": (["--seeds", "one,two"], "--seeds"),
    "generate": (["--model", "{tmp}/no-run", "--output", "{tmp}/out"], "--model"),
    "submit": (["--dry-run", "--class-noun", "dog"], "--instance-data"),
    "submit-generate": (["--dry-run", "--model", "s3://runs/dog/"], "--output"),
    "batch": (["{tmp}/missing.yaml", "--dry-run"], "missing.yaml"),
    "status": ([], "exactly one"),
    "report": (["--batch", "{tmp}/missing.yaml", "--output", "{tmp}/report"], "missing.yaml"),
    "cancel": ([], "exactly one"),
}


def run(args: list[str], tmp_path: Path):
    log = tmp_path / "termination-log"
    outcome = CliRunner().invoke(main, args, env={TERMINATION_LOG_ENV: str(log)},
                                 catch_exceptions=False)
    errors = [line for line in outcome.output.splitlines() if line.lower().startswith("error")]
    return outcome, errors, log.read_text() if log.exists() else None


def test_the_table_covers_every_command():
    assert set(BAD_INPUT) == set(main.list_commands(None))


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_error_line_and_the_termination_message(command, tmp_path):
    args, named = BAD_INPUT[command]
    outcome, errors, termination_message = run(
        [command, *(a.format(tmp=tmp_path) for a in args)], tmp_path)
    assert outcome.exit_code == 2, outcome.output
    assert len(errors) == 1 and errors[0].startswith("error: ") and named in errors[0], outcome.output
    assert "Usage:" not in outcome.output and "Traceback" not in outcome.output
    assert termination_message == errors[0].removeprefix("error: ") + "\n"


def test_a_parse_error_of_the_group_itself_goes_through_the_boundary(tmp_path):
    outcome, errors, termination_message = run(["--no-such-option"], tmp_path)
    assert outcome.exit_code == 2
    assert errors == ["error: No such option '--no-such-option'."]
    assert termination_message == "No such option '--no-such-option'.\n"


def test_an_unexpected_exception_exits_1_with_its_traceback_and_one_redacted_line(
        tmp_path, monkeypatch):
    secret = "s3cr3t-value-of-the-key"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    def broken() -> str:
        raise RuntimeError(f"bug while printing, key {secret}")

    monkeypatch.setattr(config_sources, "defaults_yaml", broken)
    outcome, errors, termination_message = run(["config", "--print-defaults"], tmp_path)
    assert outcome.exit_code == 1
    assert errors == ["error: unexpected RuntimeError: bug while printing, key [REDACTED]"]
    assert "Traceback (most recent call last)" in outcome.output
    assert termination_message == "unexpected RuntimeError: bug while printing, key [REDACTED]\n"


def test_success_and_help_still_exit_0(tmp_path):
    outcome, errors, termination_message = run(["config", "--print-defaults"], tmp_path)
    assert (outcome.exit_code, errors, termination_message) == (0, [], None)
    assert CliRunner().invoke(main, ["status", "--help"]).exit_code == 0


def test_no_command_prints_its_own_error_line():
    """Commands raise; only the boundary (and the SIGTERM handler, which must write to the file
    descriptor directly) prints `error:`."""
    package = Path(dreambooth_job.__file__).parent
    printing = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                      if 'error: {' in p.read_text() or "except JobError as exc:\n        click" in
                      p.read_text())
    assert printing == ["cli_boundary.py", "termination.py"]
