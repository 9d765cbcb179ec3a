#!/usr/bin/env bash
# The whole test suite on a clean machine: makes .venv if needed, installs the project with
# its test extras (and Debian's chromium for the report test), runs ruff and pytest.
# Extra arguments go to pytest (e.g. ./run_tests.sh -k parity).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv test
# Apache Flink and Beam's Flink job server (built with Maven) for tests/pipeline/test_flink.py; cached.
source scripts/flink_setup.sh
ensure_flink
ensure_job_server
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing chromium (headless browser for the HTML report test)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: chromium is not installed; the report's browser test will fail" >&2
  fi
fi
echo "==> ruff"
"$(dirname "$PY")/ruff" check .
echo "==> pytest"
exec "$PY" -m pytest "$@"
