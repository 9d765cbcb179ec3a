#!/usr/bin/env bash
# Apache Flink for the local cluster (scripts/flink_local.sh) and Beam's Flink job server,
# installed once into $FLINK_ROOT (default: .flink in the checkout) and reused afterwards.
#
#   scripts/flink_setup.sh            install what is missing, then print FLINK_HOME=... and
#                                     FLINK_JOB_SERVER_JAR=... (what --flink_job_server_jar takes)
#   PY=.venv-flink/bin/python scripts/flink_setup.sh
#                                     the same, with the job server for that venv's Beam (2.62.0,
#                                     scripts/constraints-flink.txt; what the Flink tests run on)
#   source scripts/flink_setup.sh     the same functions and variables, for other scripts
#
# Flink comes from PyPI: apache-flink ships bin/ and conf/, apache-flink-libraries the jars.
# Both go into their own virtual environment with --no-deps, because apache-flink pins an
# old apache-beam that must not replace the project's. Beam's job server is built with
# Maven from scripts/flink_job_server/pom.xml: Beam's Flink runner library for the Beam
# version $PY runs (default: the checkout's .venv), its dependencies copied beside it. It is
# for machines where Beam's FlinkRunner cannot fetch its own job-server jar (docs/flink.md).
# Neither step downloads anything once its result is in $FLINK_ROOT.

# Flink 1.19: the newest minor Beam 2.62's Flink runner supports (.venv-flink's Beam), and
# one that every later Beam release up to 2.77 supports too.
FLINK_VERSION="${FLINK_VERSION:-1.19.3}"
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

# The apache-beam version $PY runs (default: the checkout's .venv); the job server must match it.
beam_version() {
  "${PY:-.venv/bin/python}" -W ignore::FutureWarning -c 'import apache_beam; print(apache_beam.__version__)'
}

# Sets FLINK_JOB_SERVER_JAR to Beam's job server for this Flink minor and the project's Beam
# ($FLINK_ROOT/job-server-MINOR-BEAM/beam-runners-flink-MINOR-job-server-BEAM.jar, with its
# dependencies in lib/ beside it), building it with Maven if needed.
ensure_job_server() {
  local beam
  beam="${BEAM_VERSION:-$(beam_version)}" || return 1
  local pom dir name stamp
  pom="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/flink_job_server/pom.xml"
  dir="$FLINK_ROOT/job-server-$FLINK_MINOR-$beam"
  name="beam-runners-flink-$FLINK_MINOR-job-server-$beam.jar"
  stamp="$dir/.built-$(sha256sum "$pom" | cut -c1-16)"  # an edited pom.xml builds again
  FLINK_JOB_SERVER_JAR=""
  if [ ! -f "$stamp" ]; then
    if ! command -v mvn >/dev/null 2>&1; then
      echo "error: Maven (mvn) is needed to build Beam's Flink job server; install it (apt-get install maven)" >&2
      return 1
    fi
    echo "==> building Beam $beam's Flink $FLINK_MINOR job server with Maven into $dir (once)" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    if ! mvn -B -f "$pom" "-Dbeam.version=$beam" "-Dflink.minor=$FLINK_MINOR" \
      "-Doutput.dir=$dir" package >"$FLINK_ROOT/job-server-$FLINK_MINOR-$beam.log" 2>&1; then
      echo "error: Maven could not build org.apache.beam:beam-runners-flink-$FLINK_MINOR:$beam's job server" \
        "(details: $FLINK_ROOT/job-server-$FLINK_MINOR-$beam.log); docs/flink.md lists the versions served" >&2
      return 1
    fi
    rm -rf "$dir/maven"
    touch "$stamp"
  fi
  FLINK_JOB_SERVER_JAR="$dir/$name"
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
