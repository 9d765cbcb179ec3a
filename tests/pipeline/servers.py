"""Local servers for tests: a free port on 127.0.0.1 and waiting until something listens there."""

from __future__ import annotations

import socket
import time

import pytest


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
