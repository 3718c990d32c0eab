#!/usr/bin/env bash
# System packages that the tests run for real instead of mocking: Prometheus and its Pushgateway
# (tests/metrics), and headless Chromium, which renders a run's page (tests/job/
# test_run_page_in_browser.py, tests/demo).
# Idempotent: it installs only what is missing, so CI can call it on every run.
#   scripts/install-system-deps.sh          # install what is missing (root, or sudo without a password)
#   scripts/install-system-deps.sh --check  # exit 1 if something is missing, install nothing
set -euo pipefail

# binary=Debian package
WANTED=(
  "prometheus=prometheus"
  "prometheus-pushgateway=prometheus-pushgateway"
  "chromium=chromium"
)

missing=()
for entry in "${WANTED[@]}"; do
  command -v "${entry%%=*}" >/dev/null 2>&1 || missing+=("${entry#*=}")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-system-deps: all present"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "install-system-deps: missing ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: no apt-get here; install by hand: ${missing[*]}" >&2
  exit 1
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  as_root=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-system-deps: installing ${missing[*]}"
"${as_root[@]}" apt-get update -qq
# The packages' services are not started here (no systemd in CI); the tests start their own.
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
