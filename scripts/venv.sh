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
    # pip's and setuptools' own notices go to a log, shown only if the install fails.
    local log="$venv/install.log"
    if ! { "$venv/bin/python" -m pip install --upgrade pip \
           && "$venv/bin/python" -m pip install -e ".${extras:+[$extras]}"; } >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "error: installing the project failed; the whole log is $log" >&2
      return 1
    fi
    touch "$stamp"
  fi
  PY="$venv/bin/python"
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
}
