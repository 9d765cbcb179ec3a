#!/usr/bin/env bash
# A standalone Apache Flink cluster on 127.0.0.1: one JobManager and $FLINK_TASKMANAGERS
# TaskManagers, each its own JVM with one slot.
#
#   scripts/flink_local.sh start             start the cluster; returns once every TaskManager has registered
#   scripts/flink_local.sh status            the REST overview and the live processes (exit 3 when down)
#   scripts/flink_local.sh add-taskmanager   start one more TaskManager (a replacement after a failure)
#   scripts/flink_local.sh stop              stop every process of the cluster; none is left behind
#
# Settings (environment): FLINK_DIR (conf/, log/, pid/, tmp/; default output/flink),
# FLINK_REST_PORT (8081), FLINK_RPC_PORT (6123), FLINK_TASKMANAGERS (2),
# FLINK_JM_MEMORY (1024m), FLINK_TM_MEMORY (1536m), FLINK_RESTART_ATTEMPTS (3),
# FLINK_VERSION and FLINK_ROOT (scripts/flink_setup.sh, which installs Flink on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/flink_setup.sh

FLINK_DIR="$(mkdir -p "${FLINK_DIR:-output/flink}" && cd "${FLINK_DIR:-output/flink}" && pwd)"
REST_PORT="${FLINK_REST_PORT:-8081}"
RPC_PORT="${FLINK_RPC_PORT:-6123}"
TASKMANAGERS="${FLINK_TASKMANAGERS:-2}"
START_TIMEOUT_S=120
export FLINK_CONF_DIR="$FLINK_DIR/conf"
# The TaskManagers inherit it: scripts/flink_sdk_worker.sh, which they run for each SDK
# harness (--environment_type=PROCESS), writes the harness's stderr into $FLINK_DIR/log.
export FLINK_DIR

usage() {
  echo "usage: scripts/flink_local.sh start|status|add-taskmanager|stop" >&2
  exit 2
}

# The JobManager's REST overview as one JSON line, or nothing when it does not answer.
overview() {
  "${PYTHON:-python3}" - "$REST_PORT" <<'EOF' 2>/dev/null || true
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/overview", timeout=2) as response:
    print(json.dumps(json.load(response), sort_keys=True))
EOF
}

registered_taskmanagers() {
  overview | "${PYTHON:-python3}" -c 'import json, sys; print(json.load(sys.stdin)["taskmanagers"])' 2>/dev/null || echo 0
}

# Resource ids of the registered TaskManagers, one per line (a killed one stays listed until
# its heartbeat times out).
taskmanager_ids() {
  "${PYTHON:-python3}" - "$REST_PORT" <<'EOF' 2>/dev/null || true
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/taskmanagers", timeout=2) as response:
    print("\n".join(tm["id"] for tm in json.load(response)["taskmanagers"]))
EOF
}

# Pids of this cluster's daemons still alive, from Flink's pid files.
live_pids() {
  local file pid
  for file in "$FLINK_DIR"/pid/*.pid; do
    [ -f "$file" ] || continue
    while read -r pid; do
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
    done <"$file"
  done
}

write_config() {
  mkdir -p "$FLINK_DIR"/{conf,log,pid,tmp}
  # log4j and logback files as Flink ships them; config.yaml is ours.
  cp "$FLINK_HOME"/conf/log4j*.properties "$FLINK_HOME"/conf/logback*.xml "$FLINK_CONF_DIR"/
  # The JVM flags Flink needs on Java 17 (module exports), as its own config.yaml sets them.
  local java_opts
  java_opts="$(sed -n 's/^ *all: *//p' "$FLINK_HOME/conf/config.yaml" | head -n 1)"
  cat >"$FLINK_CONF_DIR/config.yaml" <<EOF
# Written by scripts/flink_local.sh for a cluster on 127.0.0.1; docs/flink.md says why.
env.java.opts.all: $java_opts
env.log.dir: $FLINK_DIR/log
env.pid.dir: $FLINK_DIR/pid
io.tmp.dirs: $FLINK_DIR/tmp
blob.storage.directory: $FLINK_DIR/tmp
web.tmpdir: $FLINK_DIR/tmp

jobmanager.rpc.address: 127.0.0.1
jobmanager.bind-host: 127.0.0.1
jobmanager.rpc.port: $RPC_PORT
rest.address: 127.0.0.1
rest.bind-address: 127.0.0.1
rest.port: $REST_PORT
taskmanager.host: 127.0.0.1
taskmanager.bind-host: 127.0.0.1

# One slot per TaskManager, so each slot is its own JVM (and its own SDK harness with an
# EXTERNAL worker pool per TaskManager); the whole cluster commits at most
# ${FLINK_JM_MEMORY:-1024m} + $TASKMANAGERS x ${FLINK_TM_MEMORY:-1536m}.
taskmanager.numberOfTaskSlots: 1
parallelism.default: $TASKMANAGERS
jobmanager.memory.process.size: ${FLINK_JM_MEMORY:-1024m}
taskmanager.memory.process.size: ${FLINK_TM_MEMORY:-1536m}
# Network buffers for the exchanges between the job's steps (reads, the labelling, the
# two writes and the commit step that gathers every written file). In batch mode each
# blocking result partition reserves taskmanager.network.sort-shuffle.min-buffers (512 by
# default) of the TaskManager's buffers, more than Flink's default share of a TaskManager
# this size holds once several partitions are open: fewer per partition, and more in all.
taskmanager.memory.network.min: 128mb
taskmanager.memory.network.max: 128mb
taskmanager.network.sort-shuffle.min-buffers: 128

# A failed task (e.g. its TaskManager killed) restarts the job's affected region from its
# sources, up to this many times; a dead TaskManager is noticed within heartbeat.timeout.
jobmanager.execution.failover-strategy: region
restart-strategy.type: fixed-delay
restart-strategy.fixed-delay.attempts: ${FLINK_RESTART_ATTEMPTS:-3}
restart-strategy.fixed-delay.delay: 5 s
heartbeat.interval: 2000
heartbeat.timeout: 10000
EOF
}

wait_for_taskmanagers() {
  local want="$1" deadline=$((SECONDS + START_TIMEOUT_S))
  until [ "$(registered_taskmanagers)" -ge "$want" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: $want TaskManager(s) did not register within ${START_TIMEOUT_S} s; logs in $FLINK_DIR/log" >&2
      return 1
    fi
    sleep 0.5
  done
}

start() {
  if [ -n "$(live_pids)" ]; then
    echo "error: a cluster from $FLINK_DIR is already running (pids $(live_pids | xargs)); stop it first" >&2
    exit 1
  fi
  ensure_flink
  local began=$SECONDS
  rm -rf "${FLINK_DIR:?}"/{log,pid,tmp}
  write_config
  "$FLINK_HOME/bin/jobmanager.sh" start >/dev/null
  for _ in $(seq "$TASKMANAGERS"); do
    "$FLINK_HOME/bin/taskmanager.sh" start >/dev/null
  done
  if ! wait_for_taskmanagers "$TASKMANAGERS"; then
    stop
    exit 1
  fi
  echo "Flink $FLINK_VERSION on http://127.0.0.1:$REST_PORT: 1 JobManager, $TASKMANAGERS TaskManagers" \
    "(1 slot each), up in $((SECONDS - began)) s; logs in $FLINK_DIR/log"
}

add_taskmanager() {
  ensure_flink
  local before deadline=$((SECONDS + START_TIMEOUT_S))
  before="$(taskmanager_ids)"
  "$FLINK_HOME/bin/taskmanager.sh" start >/dev/null
  until taskmanager_ids | grep -qvxF "${before:-none}"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: the new TaskManager did not register within ${START_TIMEOUT_S} s; logs in $FLINK_DIR/log" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "TaskManager added: $(taskmanager_ids | grep -vxF "${before:-none}")"
}

stop() {
  local pids
  pids="$(live_pids | xargs)"
  if [ -n "$pids" ]; then
    ensure_flink
    # Flink's own scripts send SIGTERM to each daemon and SIGKILL after 10 s.
    "$FLINK_HOME/bin/taskmanager.sh" stop-all >/dev/null 2>&1 || true
    "$FLINK_HOME/bin/jobmanager.sh" stop-all >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 30)) pid
    for pid in $pids; do
      while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
    done
  fi
  rm -f "$FLINK_DIR"/pid/*.pid
  echo "Flink cluster in $FLINK_DIR stopped${pids:+ (pids $pids)}"
}

status() {
  local summary pids
  summary="$(overview)"
  pids="$(live_pids | xargs)"
  if [ -z "$summary" ] && [ -z "$pids" ]; then
    echo "Flink cluster in $FLINK_DIR: not running"
    exit 3
  fi
  echo "Flink cluster in $FLINK_DIR: REST http://127.0.0.1:$REST_PORT ${summary:-(not answering)}"
  echo "processes: ${pids:-none}"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  add-taskmanager) add_taskmanager ;;
  *) usage ;;
esac
