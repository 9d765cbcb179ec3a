#!/usr/bin/env bash
# The test suite on a clean machine: makes the venvs if needed, installs the project with its
# test extras, runs ruff and pytest.
#   ./run_tests.sh                 the whole suite (what CI runs), in two runs:
#                                  1. in .venv, on the newest Beam setup.py allows: everything but
#                                     the flink tests;
#                                  2. in .venv-flink, on Beam 2.62.0 (scripts/constraints-flink.txt,
#                                     the release whose Flink job server can be built here): the
#                                     flink tests and the beam_version tests (code that depends on
#                                     the Beam release, so it is checked at both ends of the range).
#                                  It also installs Apache Flink and builds Beam's Flink job server
#                                  (cached in .flink/), builds Beam's Prism runner with Go (cached in
#                                  .prism/) for the --watch tests, and installs Debian's chromium for the HTML report's
#                                  browser test, and makes .venv-autofaiss (autofaiss, which needs
#                                  numpy < 2: scripts/requirements-autofaiss.txt) for the test that
#                                  runs it. The exit status is non-zero if either run fails.
#   ./run_tests.sh --fast          the fast tier, in .venv only: everything but the flink, browser,
#                                  packaging and slow tests, with neither Flink nor Chromium set up
# Further arguments go to pytest, in both runs (e.g. ./run_tests.sh --fast -k parity).
set -euo pipefail
cd "$(dirname "$0")"
FAST_TIER="not flink and not browser and not packaging and not slow"
MAIN_TIER="not flink"
FLINK_TIER="flink or beam_version"
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
source scripts/venv.sh
if [ "$fast" = 0 ]; then
  # The second venv first: the job server is built for its Beam (flink_setup.sh asks $PY).
  VENV=.venv-flink CONSTRAINTS=scripts/constraints-flink.txt ensure_venv test
  FLINK_PY="$PY"
  # The third venv: autofaiss, whose every release needs numpy < 2, for the test that runs it on
  # pipeline.export's output (tests/pipeline/test_interop.py, in the first run).
  ensure_plain_venv .venv-autofaiss scripts/requirements-autofaiss.txt
  export AUTOFAISS_PYTHON="$PWD/.venv-autofaiss/bin/python"
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
# The main venv also gets Hugging Face datasets (the interop-hf extra), which Beam 2.62 cannot
# live beside, and NVIDIA DALI (gpu-decode, about 1 GB; its pipelines run on the CPU too, so the
# GPU decode path is tested here): .venv-flink, which runs only the flink and beam_version
# tiers, goes without both.
ensure_venv test,interop-hf,gpu-decode
if [ "$fast" = 0 ]; then
  # Beam's Prism runner, for .venv's Beam, for the --watch tests (tests/pipeline/test_watch.py),
  # built with Go once (cached in .prism/).
  source scripts/prism_setup.sh
  ensure_prism
fi
echo "==> ruff"
"$(dirname "$PY")/ruff" check .
if [ "$fast" = 1 ]; then
  echo "==> pytest"
  exec "$PY" -m pytest -m "$FAST_TIER" "$@"
fi

beam_of() {
  "$1" -W ignore -c 'import apache_beam; print(apache_beam.__version__)' 2>/dev/null
}
# pytest's exit status 5 means that the arguments selected no test of a run's tier (e.g. one
# file of the main tier): that run has nothing to check, which is not a failure.
run_pytest() {
  local status=0
  "$@" || status=$?
  if [ "$status" = 5 ]; then status=0; fi
  return "$status"
}
main=0
flink=0
echo "==> pytest in .venv (Beam $(beam_of "$PY")): -m \"$MAIN_TIER\""
run_pytest "$PY" -m pytest -m "$MAIN_TIER" "$@" || main=$?
echo "==> pytest in .venv-flink (Beam $(beam_of "$FLINK_PY")): -m \"$FLINK_TIER\""
run_pytest "$FLINK_PY" -m pytest -m "$FLINK_TIER" "$@" || flink=$?
echo "==> results: .venv (Beam $(beam_of "$PY")) exit status $main;" \
  ".venv-flink (Beam $(beam_of "$FLINK_PY")) exit status $flink"
if [ "$main" != 0 ]; then exit "$main"; fi
exit "$flink"
