"""A real Flink cluster for tests: scripts/flink_local.sh on free ports, its REST API, its processes."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.job import failpoints
from tests.conftest import REPO
from tests.pipeline.servers import free_port

SCRIPT = REPO / "scripts" / "flink_local.sh"
SCRIPT_TIMEOUT_S = 300  # a cold start installs Flink from PyPI first
SETUP_TIMEOUT_S = 900  # a cold build downloads the job server's ~150 MB of jars
HARNESS = "apache_beam.runners.worker.sdk_worker_main"  # what flink_sdk_worker.py becomes
MODEL_READY = "VGG16 ready on"  # vgg.inference's line when a process has loaded the model
REST_TIMEOUT_S = 30  # one REST call; a JobManager on a busy 2-core machine can take seconds
REST_RETRY_S = 120  # how long a REST call is retried while the JobManager does not answer
# A REST call that did not get through (nothing listening yet, a reset, a slow answer): try again.
TRANSIENT = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def wait_until(condition: Callable, timeout_s: float, what: str, *, every_s: float = 0.5):
    """condition()'s first truthy value, polled every every_s; fails naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(every_s)


def _setup(function: str, variable: str) -> str:
    done = subprocess.run(
        ["bash", "-c", f"source scripts/flink_setup.sh && {function} >&2 && echo ${variable}"],
        cwd=REPO,
        env=dict(os.environ, PY=sys.executable),
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def flink_home() -> pathlib.Path:
    """The Flink distribution scripts/flink_setup.sh installs (installing it if needed)."""
    return pathlib.Path(_setup("ensure_flink", "FLINK_HOME"))


def job_server_jar() -> pathlib.Path:
    """Beam's Flink job server as scripts/flink_setup.sh builds it (building it if needed)."""
    return pathlib.Path(_setup("ensure_job_server", "FLINK_JOB_SERVER_JAR"))


@dataclass
class Cluster:
    """One scripts/flink_local.sh cluster: its folder (conf/, log/, pid/) and REST port."""

    folder: pathlib.Path
    rest_port: int
    rpc_port: int

    @property
    def gate(self) -> pathlib.Path:
        """While this file exists, every SDK harness of the cluster holds its batches before the model."""
        return self.folder / "hold-labelling"

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            FLINK_DIR=str(self.folder),
            FLINK_REST_PORT=str(self.rest_port),
            FLINK_RPC_PORT=str(self.rpc_port),
            FLINK_CONF_DIR=str(self.folder / "conf"),
            # The TaskManagers, and so the harnesses they start, see the failpoint; it does
            # nothing until a test creates the gate (pipeline.job.failpoints).
            **{failpoints.ENV: f"label=pause:{self.gate}"},
        )

    @contextlib.contextmanager
    def labelling_held(self):
        """Within: a harness that reaches the model holds its batch there; released at exit."""
        self.gate.touch()
        try:
            yield
        finally:
            self.gate.unlink(missing_ok=True)
            for marker in self.folder.glob(f"{self.gate.name}.paused.*"):
                marker.unlink(missing_ok=True)

    def held_harnesses(self) -> set[int]:
        """Live SDK harnesses holding a batch at the gate (the failpoint's markers name their pids)."""
        pids = {
            int(marker.name.rsplit(".", 1)[1]) for marker in self.folder.glob(f"{self.gate.name}.paused.*")
        }
        return {pid for pid in pids if alive(pid)}

    def held_label_subtask(self, job_id: str) -> dict | None:
        """A RUNNING subtask of the job's labelling stage whose TaskManager's harness holds a batch."""
        label = self.vertex(job_id, "Label")
        held = self.held_harnesses()
        if label is None or not held:
            return None
        for subtask in label["subtasks"]:
            if subtask["status"] == "RUNNING":
                pid = self.taskmanager_pid(subtask["taskmanager-id"])
                if held & set(children(pid)):
                    return subtask
        return None

    def wait_for_no_harness(self, timeout_s: float = 300, *, besides: frozenset[int] = frozenset()) -> None:
        """Waits until no harness of earlier jobs but `besides` is left: any other one is the next job's."""

        def others() -> list[int]:
            return [pid for pid in self.harnesses() if pid not in besides]

        try:
            wait_until(lambda: not others(), timeout_s, "SDK harnesses of earlier jobs still running")
        except AssertionError as failed:
            raise AssertionError(f"{failed}: {describe(others())}") from None

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

    def rest(self, path: str, method: str = "GET", *, retry_s: float = REST_RETRY_S):
        """`method` http://127.0.0.1:PORT/path, as parsed JSON; retried for retry_s while it does not answer.

        An HTTP error status (404: no such job) is an answer and raised at once.
        """
        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}{path}", method=method)
        deadline = time.monotonic() + retry_s
        while True:
            try:
                with urllib.request.urlopen(request, timeout=REST_TIMEOUT_S) as response:
                    return json.load(response)
            except urllib.error.HTTPError:
                raise
            except TRANSIENT:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.5)

    def daemon_pids(self, daemon: str) -> list[int]:
        """Live pids from Flink's pid file for 'taskexecutor' or 'standalonesession'."""
        pids = []
        for pid_file in (self.folder / "pid").glob(f"flink-*-{daemon}.pid"):
            pids += [int(line) for line in pid_file.read_text().split() if alive(int(line))]
        return pids

    def jvms(self) -> list[int]:
        """Every process whose command line names this cluster's folder (its JVMs, whoever started them)."""
        return [
            pid for pid, cmdline in processes() if str(self.folder) in cmdline and "java" in cmdline[:200]
        ]

    def harnesses(self) -> list[int]:
        """SDK harnesses this cluster's TaskManagers started (alive after their TaskManager died, too)."""
        return [
            pid
            for pid, cmdline in processes()
            if HARNESS in cmdline and environ(pid).get("FLINK_DIR") == str(self.folder)
        ]

    def taskmanager_pid(self, taskmanager_id: str) -> int:
        """The pid of the TaskManager JVM with this resource id ("127.0.0.1:RPC_PORT-suffix")."""
        port = int(taskmanager_id.rsplit(":", 1)[1].split("-", 1)[0])
        (pid,) = [pid for pid in self.daemon_pids("taskexecutor") if port in listening_ports(pid)]
        return pid

    def taskmanager_logs(self) -> dict[str, pathlib.Path]:
        """TaskManager resource id -> its log file (each TaskManager names its id when it starts)."""
        logs = {}
        for path in (self.folder / "log").glob("flink-*-taskexecutor-*.log"):
            found = re.search(
                r"Starting TaskManager with ResourceID: (\S+)", path.read_text(errors="replace")
            )
            if found:
                logs[found.group(1)] = path
        return logs

    def count_in_logs(self, text: str) -> dict[str, int]:
        """TaskManager resource id -> how many lines of its log hold `text`."""
        return {
            tm: sum(text in line for line in path.read_text(errors="replace").splitlines())
            for tm, path in self.taskmanager_logs().items()
        }

    def job_ids(self) -> set[str]:
        return {job["jid"] for job in self.rest("/jobs/overview")["jobs"]}

    def new_job(self, known: set[str], launcher: subprocess.Popen, timeout_s: float) -> str:
        """The id of the one job submitted since `known` was taken; fails if the launcher exits first."""

        def submitted():
            assert launcher.poll() is None, (
                f"the launcher exited with {launcher.returncode} before submitting"
            )
            return self.job_ids() - known

        (job_id,) = wait_until(submitted, timeout_s, "no job submitted")
        return job_id

    def vertex(self, job_id: str, name_part: str) -> dict | None:
        """The job's one vertex whose name holds `name_part` (status, metrics), with its "subtasks".

        None while the job's graph does not list it yet (a job just submitted has no vertices).
        """
        found = [v for v in self.rest(f"/jobs/{job_id}").get("vertices", []) if name_part in v["name"]]
        if not found:
            return None
        (vertex,) = found
        return {**vertex, "subtasks": self.rest(f"/jobs/{job_id}/vertices/{vertex['id']}")["subtasks"]}

    def harness_logs(self) -> dict[int, int]:
        """TaskManager pid -> SDK harnesses it started (scripts/flink_sdk_worker.sh logs each one)."""
        started: dict[int, int] = {}
        for path in (self.folder / "log").glob("sdk-worker-*.log"):
            pid = int(path.name.split("-")[2])
            started[pid] = started.get(pid, 0) + 1
        return started

    def wait_for_job(self, job_id: str, states: set[str], timeout_s: float) -> dict:
        """The job's details once its state is one of `states`; fails after timeout_s."""

        def reached():
            job = self.rest(f"/jobs/{job_id}")
            return job if job["state"] in states else None

        return wait_until(reached, timeout_s, f"job {job_id} not in {sorted(states)}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes():
    """(pid, command line) of every process on the machine."""
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                yield (
                    int(proc.name),
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"),
                )
            except OSError:
                continue


def describe(pids: list[int]) -> str:
    """Each process: its pid, age, parent (and the parent's command line) and command line."""
    ticks, boot = os.sysconf("SC_CLK_TCK"), time.clock_gettime(time.CLOCK_BOOTTIME)
    lines = []
    for pid in pids:
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int(stat[1])
            parent_cmdline = pathlib.Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        age = boot - int(stat[19]) / ticks
        lines.append(
            f"pid {pid}, {age:.0f} s old, parent {parent} ({parent_cmdline.decode()[:120]}): {cmdline[:300]}"
        )
    return "; ".join(lines) or "none left"


def environ(pid: int) -> dict[str, str]:
    try:
        raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def children(pid: int) -> list[int]:
    """The child processes of `pid`, whichever of its threads started them (a JVM forks from many)."""
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(found))


def rss_bytes(pid: int) -> int:
    try:
        fields = pathlib.Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return 0
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


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


@dataclass
class HarnessSampler:
    """Samples, twice a second, which SDK harness processes each TaskManager JVM has as children.

    Records the most harnesses each TaskManager had at the same time, and the peak resident
    memory of each harness and each TaskManager JVM.
    """

    taskmanagers: list[int]
    most_at_once: dict[int, int] = field(default_factory=dict)
    harness_rss: dict[int, int] = field(default_factory=dict)
    jvm_rss: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.5):
            for tm in self.taskmanagers:
                self.jvm_rss[tm] = max(self.jvm_rss.get(tm, 0), rss_bytes(tm))
                now = [pid for pid in children(tm) if HARNESS in _cmdline(pid)]
                self.most_at_once[tm] = max(self.most_at_once.get(tm, 0), len(now))
                for pid in now:
                    self.harness_rss[pid] = max(self.harness_rss.get(pid, 0), rss_bytes(pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _cmdline(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
