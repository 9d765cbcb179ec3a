# Sourced by run_local.sh and run_tests.sh: make a venv if needed and install the project
# with the given extras once per version of setup.py (and of the constraints file, if any).
# Sets PY to the venv's python. ensure_plain_venv (below) makes a venv for one tool instead.
#   VENV         the venv's folder (default: .venv)
#   CONSTRAINTS  a pip constraints file the install keeps to (e.g. scripts/constraints-flink.txt);
#                without one, pip installs the newest releases setup.py allows
ensure_venv() {
  local extras="$1"
  local venv="${VENV:-.venv}"
  local constraints="${CONSTRAINTS:-}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating virtual environment in $venv"
    "${PYTHON:-python3}" -m venv "$venv"
  fi
  local stamp
  stamp="$venv/.installed-${extras:-base}-$(cat setup.py ${constraints:+"$constraints"} | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "==> installing the project${extras:+ with extras [$extras]} into $venv${constraints:+ (constraints: $constraints)} (first run takes a few minutes)"
    # pip's and setuptools' own notices go to a log, shown only if the install fails.
    local log="$venv/install.log"
    if ! { "$venv/bin/python" -m pip install --upgrade pip \
           && "$venv/bin/python" -m pip install -e ".${extras:+[$extras]}" ${constraints:+-c "$constraints"}; } >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "error: installing the project failed; the whole log is $log" >&2
      return 1
    fi
    touch "$stamp"
  fi
  PY="$venv/bin/python"
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
}

# A venv of its own for a tool that cannot live beside the project's packages (autofaiss needs
# numpy < 2): DIR holds REQUIREMENTS (a pip requirements file) and not the project, installed
# once per version of that file. Leaves PY alone; the tool's python is DIR/bin/python.
ensure_plain_venv() {
  local venv="$1"
  local requirements="$2"
  if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating virtual environment in $venv"
    "${PYTHON:-python3}" -m venv "$venv"
  fi
  local stamp
  stamp="$venv/.installed-$(sha256sum <"$requirements" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "==> installing $requirements into $venv"
    local log="$venv/install.log"
    if ! { "$venv/bin/python" -m pip install --upgrade pip \
           && "$venv/bin/python" -m pip install -r "$requirements"; } >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "error: installing $requirements into $venv failed; the whole log is $log" >&2
      return 1
    fi
    touch "$stamp"
  fi
}
