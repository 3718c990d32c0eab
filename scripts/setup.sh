#!/usr/bin/env bash
# Set up everything the job and its tests need on a fresh machine: a virtualenv in .venv with the
# package (training and dev extras), and the system programs the tests start (Prometheus,
# Pushgateway, headless Chromium), and the Kubernetes control plane the cluster tests run, built
# from Go sources into a cache (scripts/build-cluster.sh: tens of minutes cold, seconds warm).
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
# The CPU build of torch first: asked for by version it comes from this machine's local wheel in
# seconds, and every later requirement ("torch>=2.4") is then already satisfied.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[train,dev]'
# Only for the CLIP BPE vocabulary file it ships (open_clip itself needs torchvision).
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps open_clip_torch
scripts/install-system-deps.sh
scripts/build-cluster.sh >/dev/null
