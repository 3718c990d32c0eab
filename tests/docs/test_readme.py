"""The README's facts that code defines: the exit-code table and the two set-up commands."""

import re
from pathlib import Path

from dreambooth_job.exit_codes import ExitCode

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
CI_RUN = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()


def test_exit_code_table_matches_the_enum():
    rows = re.findall(r"^\| (\d+) \| (\w+) \| ([^|]+) \|", README, flags=re.MULTILINE)
    assert {(int(code), name, meaning.strip()) for code, name, meaning in rows} == {
        (int(c), c.name, c.description) for c in ExitCode}


def test_ci_runs_exactly_the_readme_test_command():
    commands = re.findall(r"^(scripts/setup\.sh && .+?)\s+#", README, flags=re.MULTILINE)
    assert len(commands) == 2 and "demo" in commands[0]
    assert commands[1] in CI_RUN
