# Sourced by run_local.sh and run_tests.sh: make .venv if needed and install the project
# with the given extras once per version of setup.py. Sets PY to the venv's python.
ensure_venv() {
  local extras="$1"
  local venv="${VENV:-.venv}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating virtual environment in $venv"
    "${PYTHON:-python3}" -m venv "$venv"
  fi
  local stamp="$venv/.installed-${extras:-base}-$(sha256sum setup.py | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "==> installing the project${extras:+ with extras [$extras]} (first run takes a few minutes)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".${extras:+[$extras]}"
    touch "$stamp"
  fi
  PY="$venv/bin/python"
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
}
