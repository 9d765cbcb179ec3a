#!/usr/bin/env bash
# The whole test suite on a clean machine: makes .venv if needed, installs the project with
# its test extras, runs ruff and pytest. Extra arguments go to pytest (e.g. -k parity).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat setup.py | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> installing the project and its test dependencies"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
echo "==> ruff"
"$VENV/bin/ruff" check .
echo "==> pytest"
exec "$VENV/bin/python" -m pytest "$@"
