#!/usr/bin/env bash
# Re-resolve the image's pinned, hash-checked dependencies from PyPI (no Docker needed):
#
#     docker/lock.sh            # after changing pyproject.toml's dependencies or docker/*.in
#
# The locks target the image, not this machine: CPython 3.11 on x86_64 manylinux.
# tests/deploy/test_dockerfile.py fails when pyproject.toml asks for something the lock lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-$( [ -x .venv/bin/uv ] && echo .venv/bin/uv || echo uv )}
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28
        --generate-hashes --custom-compile-command docker/lock.sh --quiet)
"$uv" pip compile pyproject.toml docker/requirements.in --extra train --extra bnb --extra quant "${target[@]}" \
    --output-file docker/requirements.lock
"$uv" pip compile docker/build-constraints.in "${target[@]}" --output-file docker/build-constraints.txt
