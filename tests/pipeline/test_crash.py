"""A run killed at any step of its life leaves the last committed output, and --resume completes it once.

Each case runs `pipeline.run` in a process group of its own with a failpoint
(pipeline.job.failpoints) that SIGKILLs the whole group at one step: after listing,
mid-labelling, with every data file written, between the two tables' commits, after
them, during cleanup; for a fresh run, --resume and --resume --retry_errors. After the
kill the output must read exactly as its last committed version (every input once,
nothing of the killed run unless it committed), and a plain --resume must complete
the set with no duplicate and leave no file that no table references.

The job runs with the fake model (tests/pipeline/crash_job.py): what is tested is the
output's commit protocol, not VGG16.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipeline.table import snapshot
from tests.conftest import REPO, SAMPLES

pytestmark = pytest.mark.slow

GOOD = ("a.jpg", "b.jpg", "c.jpg")
BAD = "x.jpg"  # text, not a photo: an errors row, until a retry finds a photo there
FIRST = ("a.jpg", BAD)  # the committed run the killed one starts from
KILLED_CODE = -signal.SIGKILL
RUN_TIMEOUT_S = 300


def job(folder, out, weights, *extra, failpoint=None, env_extra=None) -> subprocess.CompletedProcess:
    """The job (fake model) in a new process group; with failpoint, PIPELINE_FAILPOINTS=failpoint."""
    env = {**os.environ, **(env_extra or {})}
    env.pop("PIPELINE_FAILPOINTS", None)
    if failpoint:
        env["PIPELINE_FAILPOINTS"] = failpoint
    argv = [sys.executable, "-m", "tests.pipeline.crash_job", "--input", f"{folder}/*", "--output", str(out)]
    process = subprocess.Popen(
        [*argv, "--weights", weights, *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        _kill_group(process.pid)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_is_gone(pgid: int, timeout_s: float = 30) -> bool:
    """Whether every process of the group has exited (the kill took the whole tree)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def photos(folder, names, *, bad=(BAD,)):
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    for name in names:
        (folder / name).write_bytes(b"not a photo" if name in bad else photo)
    return folder


def state(out) -> tuple[list[str], list[str]]:
    """(predictions' file names, errors' file names) of the output's committed version, duplicates kept."""
    found = snapshot(str(out))
    names = {}
    for table in ("predictions", "errors"):
        uris = [uri for path in found.files(table) for uri in pq.read_table(path).column("uri").to_pylist()]
        names[table] = sorted(os.path.basename(uri) for uri in uris)
    return names["predictions"], names["errors"]


def unreferenced(out) -> list[str]:
    """Data files on disk that no table's current version references."""
    found = snapshot(str(out))
    referenced = {os.path.realpath(path) for table in found.tables for path in found.files(table)}
    on_disk = {os.path.realpath(path) for path in out.glob("*/**/*.parquet")}
    return sorted(on_disk - referenced)


def check_once(predictions: list[str], errors: list[str]) -> None:
    assert len(set(predictions)) == len(predictions), predictions  # no duplicate row
    assert len(set(errors)) == len(errors), errors
    assert not set(predictions) & set(errors), (predictions, errors)  # never in both tables


# Failpoints, each with whether the killed run's rows are visible afterwards.
BEFORE_COMMIT = {"launched=kill": False, "listed=kill": False, "label=kill:2": False}
COMMIT = {"commit=kill": False, "commit.between=kill": False, "committed=kill": True, "cleanup=kill": True}
MODES = {
    "fresh": (),
    "resume": ("--resume",),
    "retry_errors": ("--resume", "--retry_errors"),
}
# Every step for a fresh run; the commit's steps for the two kinds of resume (before the
# commit every kind of run has written only files no table references).
CASES = [("fresh", point, seen) for point, seen in {**BEFORE_COMMIT, **COMMIT}.items()] + [
    (mode, point, seen) for mode in ("resume", "retry_errors") for point, seen in COMMIT.items()
]


@pytest.fixture(scope="module")
def committed(tmp_path_factory, npz_path):
    """(input folder, an output whose last committed run labelled a.jpg and failed on x.jpg).

    Each case copies the output and rewrites the folder's files (the uris, and so the
    image_ids, are the folder's: one folder for all cases, which run one at a time).
    """
    root = tmp_path_factory.mktemp("committed")
    out = root / "out"
    first = job(photos(root / "in", FIRST), out, npz_path)
    assert first.returncode == 0, first.stderr[-3000:]
    return root / "in", out


@pytest.mark.parametrize(("mode", "point", "visible"), CASES, ids=[f"{m}-{p}" for m, p, _ in CASES])
def test_a_killed_run_leaves_the_last_commit_and_a_resume_completes_it(
    tmp_path, npz_path, committed, mode, point, visible
):
    folder, out = committed[0], tmp_path / "out"
    shutil.copytree(committed[1], out)
    before = state(out)
    assert before == (["a.jpg"], [BAD])
    # The killed run sees every photo; with --retry_errors, x.jpg is a photo now (the retry succeeds).
    photos(folder, (*GOOD, BAD), bad=() if mode == "retry_errors" else (BAD,))
    killed = job(folder, out, npz_path, *MODES[mode], failpoint=point)
    assert killed.returncode == KILLED_CODE, (killed.returncode, killed.stderr[-3000:])
    after = state(out)
    check_once(*after)
    if not visible:
        assert after == before  # nothing of the killed run, not even part of it
    else:
        retried = mode == "retry_errors"
        assert after == (sorted(GOOD + ((BAD,) if retried else ())), [] if retried else [BAD])
    # A plain --resume completes the output: every input once, and no stray file left.
    done = job(folder, out, npz_path, "--resume", *(("--retry_errors",) if mode == "retry_errors" else ()))
    assert done.returncode == 0, done.stderr[-3000:]
    final = state(out)
    check_once(*final)
    if mode == "retry_errors":
        assert final == (sorted((*GOOD, BAD)), [])
    else:
        assert final == (sorted(GOOD), [BAD])
    assert unreferenced(out) == []


def test_the_kill_takes_the_whole_process_tree(tmp_path, npz_path):
    # The decoder runs in a child process of the job's (the sandbox): the failpoint's
    # SIGKILL of the group must leave neither behind.
    folder, out = photos(tmp_path / "in", GOOD), tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.pipeline.crash_job", "--input", f"{folder}/*", "--output", str(out)]
        + ["--weights", npz_path],
        cwd=REPO,
        env={**os.environ, "PIPELINE_FAILPOINTS": "commit=kill"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert process.wait(timeout=RUN_TIMEOUT_S) == KILLED_CODE
        assert group_is_gone(process.pid)
    finally:
        _kill_group(process.pid)
    # Killed before its first commit: there is no output to read, and the next run starts clean.
    assert not snapshot(str(out)).exists
