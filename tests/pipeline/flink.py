"""A real Flink cluster for tests: scripts/flink_local.sh on free ports, its REST API, its processes."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
import urllib.request
from dataclasses import dataclass

from tests.conftest import REPO
from tests.pipeline.servers import free_port

SCRIPT = REPO / "scripts" / "flink_local.sh"
JOB_SOURCE = pathlib.Path(__file__).parent / "flink_job" / "SlowSequence.java"
SCRIPT_TIMEOUT_S = 300  # a cold start installs Flink from PyPI first


def flink_home() -> pathlib.Path:
    """The Flink distribution scripts/flink_setup.sh installs (installing it if needed)."""
    done = subprocess.run(
        ["bash", "-c", "source scripts/flink_setup.sh && ensure_flink >&2 && echo $FLINK_HOME"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=True,
    )
    return pathlib.Path(done.stdout.strip())


@dataclass
class Cluster:
    """One scripts/flink_local.sh cluster: its folder (conf/, log/, pid/) and REST port."""

    folder: pathlib.Path
    rest_port: int
    rpc_port: int

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            FLINK_DIR=str(self.folder),
            FLINK_REST_PORT=str(self.rest_port),
            FLINK_RPC_PORT=str(self.rpc_port),
            FLINK_CONF_DIR=str(self.folder / "conf"),
        )

    def script(self, command: str) -> subprocess.CompletedProcess:
        """scripts/flink_local.sh COMMAND for this cluster; stdout and stderr as text."""
        return subprocess.run(
            ["bash", str(SCRIPT), command],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
        )

    def rest(self, path: str):
        """GET http://127.0.0.1:PORT/path, as parsed JSON."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{path}", timeout=10) as response:
            return json.load(response)

    def daemon_pids(self, daemon: str) -> list[int]:
        """Live pids from Flink's pid file for 'taskexecutor' or 'standalonesession'."""
        pids = []
        for pid_file in (self.folder / "pid").glob(f"flink-*-{daemon}.pid"):
            pids += [int(line) for line in pid_file.read_text().split() if alive(int(line))]
        return pids

    def jvms(self) -> list[int]:
        """Every process whose command line names this cluster's folder (its JVMs, whoever started them)."""
        found = []
        for proc in pathlib.Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.folder) in cmdline and "java" in cmdline.split(" ", 1)[0]:
                found.append(int(proc.name))
        return found

    def taskmanager_pid(self, taskmanager_id: str) -> int:
        """The pid of the TaskManager JVM with this resource id ("127.0.0.1:RPC_PORT-suffix")."""
        port = int(taskmanager_id.rsplit(":", 1)[1].split("-", 1)[0])
        (pid,) = [pid for pid in self.daemon_pids("taskexecutor") if port in listening_ports(pid)]
        return pid

    def wait_for_job(self, job_id: str, states: set[str], timeout_s: float) -> dict:
        """The job's details once its state is one of `states`; raises after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.rest(f"/jobs/{job_id}")
            if job["state"] in states:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s:g} s")
            time.sleep(0.5)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def new_cluster(folder: pathlib.Path) -> Cluster:
    return Cluster(folder=folder, rest_port=free_port(), rpc_port=free_port())


def build_job_jar(folder: pathlib.Path) -> pathlib.Path:
    """tests/pipeline/flink_job/SlowSequence.java compiled against the cluster's own jars."""
    classes = folder / "classes"
    classes.mkdir()
    lib = flink_home() / "lib"
    subprocess.run(
        ["javac", "-nowarn", "-d", str(classes), "-cp", f"{lib}/*", str(JOB_SOURCE)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    jar = folder / "slow-sequence.jar"
    subprocess.run(["jar", "cf", str(jar), "-C", str(classes), "."], check=True, timeout=60)
    return jar
