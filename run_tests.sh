#!/usr/bin/env bash
# The test suite on a clean machine: makes .venv if needed, installs the project with its
# test extras, runs ruff and pytest.
#   ./run_tests.sh                 the whole suite (what CI runs): also installs Apache Flink and
#                                  builds Beam's Flink job server (cached in .flink/), and Debian's
#                                  chromium for the HTML report's browser test
#   ./run_tests.sh --fast          the fast tier: everything but the flink, browser, packaging and
#                                  slow tests, with neither Flink nor Chromium set up
# Further arguments go to pytest (e.g. ./run_tests.sh --fast -k parity).
set -euo pipefail
cd "$(dirname "$0")"
FAST_TIER="not flink and not browser and not packaging and not slow"
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
source scripts/venv.sh
ensure_venv test
if [ "$fast" = 0 ]; then
  # Apache Flink and Beam's Flink job server for tests/pipeline/test_flink.py; cached.
  source scripts/flink_setup.sh
  ensure_flink
  ensure_job_server
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "==> installing chromium (headless browser for the HTML report test)"
      # Another install holding apt's or dpkg's lock is waited for, not a failure.
      lock=(-o DPkg::Lock::Timeout=600)
      apt-get "${lock[@]}" update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y -qq chromium >/dev/null
    else
      echo "warning: chromium is not installed; the report's browser test will fail" >&2
    fi
  fi
fi
echo "==> ruff"
"$(dirname "$PY")/ruff" check .
echo "==> pytest"
if [ "$fast" = 1 ]; then
  exec "$PY" -m pytest -m "$FAST_TIER" "$@"
fi
exec "$PY" -m pytest "$@"
