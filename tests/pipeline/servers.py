"""Local servers for tests: free ports on 127.0.0.1, starting, waiting for and stopping service processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_listening(port: int, *, timeout_s: float, what: str) -> None:
    """Returns once 127.0.0.1:port accepts connections; fails the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not listening(port):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not start listening on 127.0.0.1:{port} within {timeout_s:g} s")
        time.sleep(0.1)


def start_service(command: list[str], log_path, cwd) -> subprocess.Popen:
    """Starts a service in its own process group, with the venv's python first on PATH.

    The worker pool starts each SDK harness as `python -c ...` looked up on PATH, so that
    `python` must be the one that has this project installed.
    """
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_until(ready, process: subprocess.Popen, log_path, what: str) -> None:
    """Returns once ready() is true; fails the test (with the log's tail) if the process dies or is slow."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not listening after {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


def stop_service(process: subprocess.Popen) -> None:
    # SIGKILL to the whole group: these gRPC servers outlive SIGTERM, and the group also
    # holds any SDK harness the pool started. Nothing of theirs needs a clean shutdown.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)
