"""A real Apache Flink cluster on 127.0.0.1, as scripts/flink_local.sh starts it for users.

One cluster for the module (a JobManager and two TaskManagers, each its own JVM), always
stopped at the end. A small Java batch job (tests/pipeline/flink_job/SlowSequence.java)
stands in for the work while one TaskManager is SIGKILLed: the cluster's restart strategy
and a replacement TaskManager must bring the job to FINISHED with every record exactly once.
Beam's Flink job server, which the labelling job itself needs on Flink, is not served here
(docs/flink.md), so no test submits the Beam pipeline to this cluster.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error

import pytest

from tests.pipeline.flink import alive, build_job_jar, flink_home, new_cluster

TASKMANAGERS = 2
TM_MEMORY = 1536 * 2**20  # scripts/flink_local.sh's default FLINK_TM_MEMORY, 1536m
NUMBERS = 2000  # the job's records; 20 ms each on 2 subtasks: about 20 s of work
MILLIS_PER_NUMBER = 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = new_cluster(tmp_path_factory.mktemp("flink"))
    started = cluster.script("start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield cluster
    finally:
        cluster.script("stop")
        for pid in cluster.jvms():  # only if stop failed: never leave a JVM behind
            os.kill(pid, signal.SIGKILL)


def test_start_gives_a_jobmanager_and_two_taskmanager_jvms_with_one_slot_each(cluster):
    overview = cluster.rest("/overview")
    assert (overview["taskmanagers"], overview["slots-total"]) == (TASKMANAGERS, TASKMANAGERS)
    assert overview["flink-version"] == "1.20.5"  # scripts/flink_setup.sh's FLINK_VERSION
    taskmanagers = cluster.rest("/taskmanagers")["taskmanagers"]
    assert [tm["slotsNumber"] for tm in taskmanagers] == [1, 1]
    for tm in taskmanagers:
        details = cluster.rest(f"/taskmanagers/{tm['id']}")
        assert details["memoryConfiguration"]["totalProcessMemory"] == TM_MEMORY
    # Three separate JVMs, and no other process runs from the cluster's folder.
    (jobmanager,) = cluster.daemon_pids("standalonesession")
    workers = cluster.daemon_pids("taskexecutor")
    assert len(workers) == TASKMANAGERS
    assert sorted(cluster.jvms()) == sorted([jobmanager, *workers])
    status = cluster.script("status")
    assert status.returncode == 0 and '"taskmanagers": 2' in status.stdout


def test_config_sets_a_restart_strategy_and_fast_heartbeats(cluster):
    config = {item["key"]: item["value"] for item in cluster.rest("/jobmanager/config")}
    assert config["restart-strategy.type"] == "fixed-delay"
    assert config["restart-strategy.fixed-delay.attempts"] == "3"
    # A killed TaskManager is declared dead within 10 s instead of Flink's default 50 s.
    assert config["heartbeat.timeout"] == "10000"
    assert (config["rest.address"], config["rest.port"]) == ("127.0.0.1", str(cluster.rest_port))


def running_subtasks(cluster, job_id: str) -> list[dict]:
    """The job's one vertex's subtasks, once both run; [] until then."""
    job = cluster.rest(f"/jobs/{job_id}")
    (vertex,) = job["vertices"]  # source -> map -> sink, chained into one vertex
    subtasks = cluster.rest(f"/jobs/{job_id}/vertices/{vertex['id']}")["subtasks"]
    return subtasks if all(s["status"] == "RUNNING" for s in subtasks) else []


def test_job_survives_a_killed_taskmanager_with_every_record_once(cluster, tmp_path):
    jar = build_job_jar(tmp_path)
    out = tmp_path / "numbers"
    submitted = subprocess.run(
        [str(flink_home() / "bin" / "flink"), "run", "-d", "-p", str(TASKMANAGERS), "-c", "SlowSequence",
         str(jar), str(NUMBERS), str(MILLIS_PER_NUMBER), str(out)],
        env=cluster.env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = re.search(r"JobID ([0-9a-f]{32})", submitted.stdout).group(1)

    deadline = time.monotonic() + 120
    while not (subtasks := running_subtasks(cluster, job_id)):
        assert time.monotonic() < deadline, "the job's two subtasks never ran"
        time.sleep(0.5)
    # Both TaskManagers work on the job: one subtask each.
    victim = subtasks[0]["taskmanager-id"]
    assert sorted(s["taskmanager-id"] for s in subtasks) == sorted(
        tm["id"] for tm in cluster.rest("/taskmanagers")["taskmanagers"]
    )
    time.sleep(3)  # mid-job: each subtask has written some of its numbers

    pid = cluster.taskmanager_pid(victim)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # A standalone cluster does not replace a dead TaskManager; a cluster manager would.
    added = cluster.script("add-taskmanager")
    assert added.returncode == 0, added.stderr
    replaced_s = time.monotonic() - killed_at

    job = cluster.wait_for_job(job_id, {"FINISHED", "FAILED", "CANCELED"}, timeout_s=240)
    assert job["state"] == "FINISHED"
    assert not alive(pid)
    # One failure, the lost TaskManager's, and so one restart of its region.
    (failure,) = cluster.rest(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
    assert failure["taskManagerId"] == victim
    # The restarted subtask rewrote its file from the start: each number exactly once.
    numbers = [int(line) for path in sorted(out.iterdir()) for line in path.read_text().split()]
    assert sorted(numbers) == list(range(1, NUMBERS + 1))
    print(
        f"\nflink fault run: {len(numbers)} records, 1 TaskManager SIGKILLed, 1 restart; replacement "
        f"registered {replaced_s:.1f} s after the kill; job wall {job['duration'] / 1000:.1f} s"
    )


def test_stop_leaves_no_process_behind(cluster):
    stopped = cluster.script("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert cluster.jvms() == []
    with pytest.raises(urllib.error.URLError):
        cluster.rest("/overview")
    status = cluster.script("status")
    assert status.returncode == 3 and "not running" in status.stdout
