"""Runs `python -m pipeline.run` in a subprocess, as a user does, for the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def run_job(*args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """The job with these arguments; with check, a non-zero exit fails the test with stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.run", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done
