"""benchmarks.watch, short: a --watch launcher on Prism (the fake model), its results file and table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import watch
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_quick_run_measures_the_trickle_and_a_rate_step(tmp_path, npz_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.watch", "--quick", "--job", "tests.pipeline.crash_job",
         "--weights", npz_path, "--out", str(tmp_path / "work"), "--results", str(tmp_path / "results")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log = tmp_path / "work" / "watch-job.log"
    assert done.returncode == 0, done.stderr[-3000:] + log.read_text()[-3000:]
    data = json.loads((tmp_path / "results" / "watch.json").read_text())
    assert data["benchmark"] == "watch" and data["untrained"] is True
    trickle = data["trickle"]
    assert trickle["files"] == 6  # 1 file/s for 6 s
    # Every file's lag is at least a read's wait and at most its whole wait for the tables.
    assert 0 < trickle["p50_s"] <= trickle["p95_s"] <= trickle["max_s"] < watch.DRAIN_TIMEOUT_S
    (step,) = data["steps"]
    assert (step["rate"], step["files"]) == (2.0, 12)
    assert step["committed_per_s"] > 0 and isinstance(step["kept_up"], bool)
    assert data["highest_rate_kept_up"] == (2.0 if step["kept_up"] else None)
    text = (tmp_path / "results" / "watch.txt").read_text()
    assert "trickle, 1 file/s for 6 s" in text and watch.UNTRAINED in text
    # The launcher was drained and stopped: nothing of it is left.
    log = log.read_text()
    assert "drained: every window up to" in log and "summary:" in log
