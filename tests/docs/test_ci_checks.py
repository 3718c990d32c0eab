"""What CI checks: scripts/check.sh lints, type-checks and tests, in that order, with tools that
`scripts/setup.sh` installs (the dev extra)."""

import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _commands(script: Path) -> list[list[str]]:
    """The script's commands, words split as the shell does, without set-up lines."""
    lines = [line.strip() for line in script.read_text().splitlines()]
    words = [shlex.split(line) for line in lines if line and not line.startswith("#")]
    return [w for w in words if w[0] not in ("set", "cd")]


def test_check_script_lints_then_type_checks_then_tests():
    commands = _commands(REPO / "scripts" / "check.sh")
    assert [c for c in commands if c[0] == "exec"] == [commands[-1]]  # pytest ends the script
    tools = [Path(c[1] if c[0] == "exec" else c[0]).name for c in commands]
    assert tools == ["ruff", "mypy", "python"]
    assert commands[0][1:] == ["check", "dreambooth_job", "tests", "scripts", "helm"]
    assert commands[1][1:] == []  # the files and settings are pyproject.toml's [tool.mypy]
    assert commands[2][2:] == ["-m", "pytest", "-q", "$@"]


def test_the_dev_extra_installs_the_checkers():
    dev = {Requirement(r).name.lower() for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    assert {"ruff", "mypy", "types-pyyaml", "pytest"} <= dev


def test_mypy_checks_the_kubernetes_side_and_every_definition_is_typed():
    settings = PYPROJECT["tool"]["mypy"]
    assert {"dreambooth_job/k8s", "dreambooth_job/metrics"} <= set(settings["files"])
    assert settings["disallow_untyped_defs"] and settings["check_untyped_defs"]
    for pattern in settings["files"]:
        assert list(REPO.glob(pattern)), f"[tool.mypy] files names nothing: {pattern}"
