"""Import boundaries that other systems and the job's start-up time rely on."""

import json
import subprocess
import sys

from click.testing import CliRunner

from dreambooth_job.cli import LAZY_COMMANDS, main


def loaded_after(statement: str, modules: list[str]) -> dict[str, bool]:
    """Which of `modules` a fresh interpreter has loaded after running `statement`."""
    probe = f"import sys, json\n{statement}\nprint(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_kubernetes_side_imports_without_training_dependencies():
    loaded = loaded_after("import dreambooth_job.k8s, dreambooth_job.k8s.commands",
                          ["torch", "diffusers", "transformers", "accelerate"])
    assert loaded == {"torch": False, "diffusers": False, "transformers": False, "accelerate": False}


def test_kubernetes_commands_do_not_import_the_cli_module():
    """They share the error boundary (cli_boundary.py) with cli.py, not cli.py itself."""
    loaded = loaded_after("import dreambooth_job.k8s.commands", ["dreambooth_job.cli"])
    assert loaded == {"dreambooth_job.cli": False}


def test_train_command_path_does_not_import_the_kubernetes_client():
    loaded = loaded_after("import dreambooth_job.cli, dreambooth_job.job", ["kubernetes"])
    assert loaded == {"kubernetes": False}


def test_every_lazy_command_resolves_and_is_listed():
    listing = CliRunner().invoke(main, ["--help"])
    assert listing.exit_code == 0
    for name in LAZY_COMMANDS:
        assert f"\n  {name} " in listing.output
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert f" {name} [" in result.output.splitlines()[0]


def test_the_job_imports_no_developer_tooling():
    """devtools/ (demo, local S3 server, tiny-model builders) is for tests, the demo and bench only."""
    statement = ("import dreambooth_job.job, dreambooth_job.training.trainer, "
                 "dreambooth_job.phases.fine_tune, dreambooth_job.phases.publish")
    loaded = loaded_after(statement, ["dreambooth_job.devtools", "dreambooth_job.bench"])
    assert loaded == {"dreambooth_job.devtools": False, "dreambooth_job.bench": False}
