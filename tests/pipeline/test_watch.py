"""--watch as a user runs it: a streaming job on Beam's Prism runner labelling files as they land.

The job runs with the fake model (tests/pipeline/crash_job.py), in its own process group,
on a folder that starts empty: batches of files (bad ones among them) are dropped in, and
each must be in the committed tables within the poll interval + the window + labelling;
the launcher is stopped with SIGTERM, files land while it is down, and a second launch
labels those once and nothing it had committed again.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from pipeline.contract import ERRORS, PREDICTIONS, image_id, path_uri
from pipeline.table import snapshot
from tests.conftest import REPO, SAMPLES
from tests.pipeline.test_crash import group_is_gone

pytestmark = pytest.mark.slow

POLL_S, WINDOW_S = 1, 3
# How long one batch may take to be committed: poll + window + labelling + commit, with a
# slow, busy machine's margin. A condition is waited on, never this long unless it fails.
BATCH_DEADLINE_S = 240


@pytest.fixture(scope="session")
def prism_location() -> str:
    """Beam's Prism runner for the installed Beam (scripts/prism_setup.sh builds it once with Go)."""
    if os.environ.get("PRISM_LOCATION"):
        return os.environ["PRISM_LOCATION"]
    env = {**os.environ, "PY": sys.executable}
    done = subprocess.run(
        ["bash", "scripts/prism_setup.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("PRISM_LOCATION=")]
    return line.split("=", 1)[1]


class Watch:
    """A --watch launcher in its own process group, its output in a log file."""

    def __init__(self, folder, out, weights: str, prism: str, log: pathlib.Path, *, failpoints: str = ""):
        argv = [sys.executable, "-m", "tests.pipeline.crash_job", "--watch", "--input", f"{folder}/*"]
        argv += ["--output", str(out), "--weights", weights, "--poll_interval_s", str(POLL_S)]
        argv += ["--window_s", str(WINDOW_S), "--settle_s", "0", f"--prism_location={prism}"]
        env = {k: v for k, v in os.environ.items() if k != "PIPELINE_FAILPOINTS"}
        if failpoints:
            env["PIPELINE_FAILPOINTS"] = failpoints
        self.log = log
        with open(log, "w") as handle:
            self.process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # fmt: skip

    def stop(self, *, then=None) -> int:
        """SIGTERM to the launcher (then `then()`); its exit status once it and all it started are gone."""
        self.process.send_signal(signal.SIGTERM)
        if then is not None:
            then()
        try:
            code = self.process.wait(timeout=120)
        finally:
            gone = group_is_gone(self.process.pid)
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert gone, f"the launcher left processes behind:\n{self.text()[-3000:]}"
        return code

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def committed(out: pathlib.Path) -> dict[str, list[str]]:
    """image_id -> the tables holding it, as a reader sees the output now (one entry per row)."""
    found: dict[str, list[str]] = {}
    if not (out / PREDICTIONS).exists():
        return found
    snap = snapshot(str(out))
    for table in (PREDICTIONS, ERRORS):
        if snap.tables.get(table) is None:
            continue
        for key in snap.tables[table].to_pyarrow_table(columns=["image_id"]).column("image_id").to_pylist():
            found.setdefault(key, []).append(table)
    return found


def wait_for(out: pathlib.Path, ids: set[str], watch: Watch) -> float:
    """Seconds until every id in `ids` is committed; fails with the job's log past BATCH_DEADLINE_S."""
    start = time.monotonic()
    while not ids <= committed(out).keys():
        if watch.process.poll() is not None:
            pytest.fail(f"the watch job exited with {watch.process.returncode}:\n{watch.text()[-4000:]}")
        if time.monotonic() - start > BATCH_DEADLINE_S:
            pytest.fail(f"{len(ids - committed(out).keys())} file(s) not committed in {BATCH_DEADLINE_S} s:\n"
                        f"{watch.text()[-4000:]}")  # fmt: skip
        time.sleep(0.5)
    return time.monotonic() - start


def drop(folder: pathlib.Path, batch: int) -> dict[str, str]:
    """Two photos and one text file named .jpg into the folder, each written elsewhere and moved in.

    Returns image_id -> the table it belongs in.
    """
    staging = folder.parent / f"staging-{batch}"
    staging.mkdir()
    files = {
        f"b{batch}-coffee.jpg": ((SAMPLES / "coffee.jpg").read_bytes(), PREDICTIONS),
        f"b{batch}-rocket.jpg": ((SAMPLES / "rocket.jpg").read_bytes(), PREDICTIONS),
        f"b{batch}-notes.jpg": (b"<html>not a photo</html>", ERRORS),
    }
    expected = {}
    for name, (data, table) in files.items():
        (staging / name).write_bytes(data)
        os.rename(staging / name, folder / name)
        expected[image_id(path_uri(str(folder / name)))] = table
    return expected


def wait_for_file(pattern: str, folder: pathlib.Path, watch: Watch) -> None:
    start = time.monotonic()
    while not list(folder.glob(pattern)):
        if watch.process.poll() is not None:
            pytest.fail(f"the watch job exited with {watch.process.returncode}:\n{watch.text()[-4000:]}")
        if time.monotonic() - start > BATCH_DEADLINE_S:
            pytest.fail(f"no {pattern} in {BATCH_DEADLINE_S} s:\n{watch.text()[-4000:]}")
        time.sleep(0.1)


def test_watch_labels_batches_as_they_land_drains_on_sigterm_and_a_restart_labels_the_rest_once(
    tmp_path, npz_path, prism_location
):
    folder, out = tmp_path / "inbox", tmp_path / "out"
    folder.mkdir()
    gate = tmp_path / "gate"  # while it exists, the job holds before each batch goes through the model
    watch = Watch(folder, out, npz_path, prism_location, tmp_path / "watch-1.log",
                  failpoints=f"label=pause:{gate}")  # fmt: skip
    expected: dict[str, str] = {}
    try:
        dropped = drop(folder, 1)
        expected |= dropped
        wait_for(out, set(dropped), watch)
        # A committed file rewritten with new bytes is not labelled again (docs/watch.md).
        (folder / "b1-coffee.jpg").write_bytes((SAMPLES / "retina.jpg").read_bytes())
        # Batch 2 is taken (the job holds it at the model) when SIGTERM comes: the drain must
        # let it through and commit its window before the job is cancelled.
        gate.write_text("")
        dropped = drop(folder, 2)
        expected |= dropped
        wait_for_file("gate.paused.*", tmp_path, watch)
        assert watch.stop(then=gate.unlink) == 0
    finally:
        if watch.process.poll() is None:
            os.killpg(watch.process.pid, signal.SIGKILL)
    first_log = watch.text()
    assert "drained: every window up to" in first_log, first_log[-3000:]
    assert set(dropped) <= committed(out).keys(), first_log[-3000:]
    assert "summary:" in first_log and not list(out.glob(".watch/*")), first_log[-3000:]
    # Batch 3 lands while no job runs; the next launch finds it, and nothing committed is labelled again.
    dropped = drop(folder, 3)
    expected |= dropped
    watch = Watch(folder, out, npz_path, prism_location, tmp_path / "watch-2.log")
    try:
        # The launch's first poll lists batches 1 to 3 at once: had it not skipped the first two,
        # they would be in batch 3's window, committed with it, so no further wait is needed.
        wait_for(out, set(dropped), watch)
        assert watch.stop() == 0
    finally:
        if watch.process.poll() is None:
            os.killpg(watch.process.pid, signal.SIGKILL)
    assert committed(out) == {key: [table] for key, table in expected.items()}
    assert "window " in first_log and "committed" in first_log
