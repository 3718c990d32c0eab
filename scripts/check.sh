#!/usr/bin/env bash
# What CI runs (.ci/run, after scripts/setup.sh): the linter, the type checker, then the tests;
# the first that fails stops the rest. Arguments go to pytest: `scripts/check.sh -n 0 tests/k8s`.
#   ruff: the rules in pyproject.toml's [tool.ruff], over the code, the tests and the scripts.
#   mypy: the files and strictness in pyproject.toml's [tool.mypy] (the torch-free modules).
set -euo pipefail
cd "$(dirname "$0")/.."

.venv/bin/ruff check dreambooth_job tests scripts helm
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
