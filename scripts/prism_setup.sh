#!/usr/bin/env bash
# Beam's Prism runner (its local streaming runner) for the tests of --watch, built once with
# Go from the Go module proxy into $PRISM_ROOT (default: .prism in the checkout).
#
#   scripts/prism_setup.sh          build what is missing, then print PRISM_LOCATION=... (what
#                                   --prism_location takes)
#   source scripts/prism_setup.sh   the same function, for other scripts
#
# On users' machines Beam's PrismRunner fetches the binary of its own release from Beam's
# GitHub releases by itself; these machines reach no GitHub, so the tests build the same
# program (github.com/apache/beam/sdks/v2/go/cmd/prism at the installed Beam's tag) and pass
# --prism_location. Nothing is downloaded once the binary is in $PRISM_ROOT.

PRISM_ROOT="${PRISM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.prism}"

# Sets PRISM_LOCATION to Prism for the Beam $PY runs (default: the checkout's .venv), building it if needed.
ensure_prism() {
  local beam
  beam="$("${PY:-.venv/bin/python}" -W ignore::FutureWarning -c 'import apache_beam; print(apache_beam.__version__)')" \
    || return 1
  local dir="$PRISM_ROOT/v$beam"
  if [ ! -x "$dir/prism" ]; then
    if ! command -v go >/dev/null 2>&1; then
      echo "error: building Beam's Prism runner needs Go (https://go.dev/doc/install)" >&2
      return 1
    fi
    echo "==> building Beam's Prism runner v$beam with Go into $dir (once)" >&2
    mkdir -p "$dir.tmp"
    if ! GOBIN="$dir.tmp" GOFLAGS=-mod=mod go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$beam" >&2; then
      rm -rf "$dir.tmp"
      echo "error: go install of Beam's Prism runner v$beam failed" >&2
      return 1
    fi
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
  fi
  export PRISM_LOCATION="$dir/prism"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  ensure_prism
  echo "PRISM_LOCATION=$PRISM_LOCATION"
fi
