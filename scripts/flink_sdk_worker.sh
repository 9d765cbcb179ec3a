#!/usr/bin/env bash
# The command of `--environment_type=PROCESS` on the local Flink cluster: a TaskManager runs
#   scripts/flink_sdk_worker.sh --id=WORKER_ID --provision_endpoint=HOST:PORT
# for each SDK harness it needs; scripts/flink_sdk_worker.py says what happens then.
# The harness runs on $BEAM_SDK_PYTHON (default: the checkout's .venv), which must have
# this project and the launcher's apache-beam installed. Its stderr (start-up errors that
# cannot reach the TaskManager's log) goes to $FLINK_DIR/log/sdk-worker-TMPID-WORKER_ID.log,
# TMPID being the TaskManager's pid, when scripts/flink_local.sh started that TaskManager.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${BEAM_SDK_PYTHON:-$here/../.venv/bin/python}"
if [ -n "${FLINK_DIR:-}" ] && [ -d "$FLINK_DIR/log" ]; then
  id="$(printf '%s\n' "$@" | sed -n 's/^--id=//p' | tr -c 'A-Za-z0-9_.\n-' _)"
  exec 2>>"$FLINK_DIR/log/sdk-worker-$PPID-${id:-unknown}.log"
fi
exec "$python" "$here/flink_sdk_worker.py" "$@"
