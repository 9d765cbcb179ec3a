#!/usr/bin/env bash
# Apache Flink for the local cluster (scripts/flink_local.sh) and Beam's Flink job server,
# installed once into $FLINK_ROOT (default: .flink in the checkout) and reused afterwards.
#
#   scripts/flink_setup.sh            install what is missing, then print FLINK_HOME=... and
#                                     FLINK_JOB_SERVER_JAR=... (empty when Maven has no jar)
#   source scripts/flink_setup.sh     the same functions and variables, for other scripts
#
# Flink comes from PyPI: apache-flink ships bin/ and conf/, apache-flink-libraries the jars.
# Both go into their own virtual environment with --no-deps, because apache-flink pins an
# old apache-beam that must not replace the project's. Beam's job server comes from Maven
# Central through `mvn dependency:copy`, for the Beam version the project's venv runs.
# Neither step downloads anything once its result is in $FLINK_ROOT.

FLINK_VERSION="${FLINK_VERSION:-1.20.5}"
FLINK_MINOR="${FLINK_VERSION%.*}"
FLINK_ROOT="${FLINK_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.flink}"

# Sets FLINK_HOME to an installed Flink $FLINK_VERSION (bin/, conf/, lib/), installing it if needed.
ensure_flink() {
  local venv="$FLINK_ROOT/flink-$FLINK_VERSION"
  local stamp="$venv/.installed"
  if [ ! -f "$stamp" ]; then
    echo "==> installing Apache Flink $FLINK_VERSION from PyPI into $venv (once)" >&2
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv" || return 1
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
      "apache-flink==$FLINK_VERSION" "apache-flink-libraries==$FLINK_VERSION" || return 1
    touch "$stamp"
  fi
  FLINK_HOME="$(echo "$venv"/lib/python3*/site-packages/pyflink)"
  if [ ! -x "$FLINK_HOME/bin/jobmanager.sh" ]; then
    echo "error: no Flink distribution under $FLINK_HOME; remove $venv and run again" >&2
    return 1
  fi
  export FLINK_HOME
}

# The apache-beam version the project's virtual environment runs (the job server must match it).
beam_version() {
  "${PY:-.venv/bin/python}" -c 'import apache_beam; print(apache_beam.__version__)'
}

# Sets FLINK_JOB_SERVER_JAR to Beam's job server for this Flink minor and the project's Beam,
# fetching it from Maven Central if needed. When Maven does not serve that jar, it says so
# on one line, leaves FLINK_JOB_SERVER_JAR empty and returns 0: the cluster works without it.
ensure_job_server() {
  local beam="${BEAM_VERSION:-$(beam_version)}" || return 1
  local artifact="beam-runners-flink-$FLINK_MINOR-job-server"
  local jar="$FLINK_ROOT/jars/$artifact-$beam.jar"
  FLINK_JOB_SERVER_JAR=""
  local refused="$jar.not-served"
  if [ ! -f "$jar" ] && [ -n "$(find "$refused" -mmin -1440 2>/dev/null)" ]; then
    # Asked within the last day and refused: Maven would only say no again, more slowly.
    echo "note: org.apache.beam:$artifact:$beam is not served (asked within a day; $refused)" >&2
    return 0
  fi
  if [ ! -f "$jar" ]; then
    if ! command -v mvn >/dev/null 2>&1; then
      echo "note: Maven (mvn) is not installed, so Beam's Flink job server was not fetched" >&2
      return 0
    fi
    echo "==> fetching org.apache.beam:$artifact:$beam with Maven (once)" >&2
    mkdir -p "$FLINK_ROOT/jars"
    if ! mvn -q -B dependency:copy "-Dartifact=org.apache.beam:$artifact:$beam" \
      "-DoutputDirectory=$FLINK_ROOT/jars" >"$FLINK_ROOT/jars/mvn.log" 2>&1; then
      touch "$refused"
      echo "note: Maven Central, as reached from here, does not serve org.apache.beam:$artifact:$beam" \
        "(details: $FLINK_ROOT/jars/mvn.log); jobs on Flink need that jar (docs/flink.md)" >&2
      return 0
    fi
  fi
  FLINK_JOB_SERVER_JAR="$jar"
  export FLINK_JOB_SERVER_JAR
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  cd "$(dirname "$0")/.."
  ensure_flink
  ensure_job_server
  echo "FLINK_HOME=$FLINK_HOME"
  echo "FLINK_JOB_SERVER_JAR=$FLINK_JOB_SERVER_JAR"
fi
