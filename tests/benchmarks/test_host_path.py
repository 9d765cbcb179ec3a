"""benchmarks.host_path on a few hundred photos: its results file, and the stand-in's rows really written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.contract import image_id
from pipeline.table import snapshot
from tests.conftest import REPO

# The small run's photos; the large run has each hard-linked REPEAT times. Its rate is a
# difference of two walls, each with a start-up of several seconds: a few hundred inputs keep
# that difference above the noise.
IMAGES, REPEAT = 80, 4


def host_path(tmp_path, npz_path, *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    out, written = tmp_path / "scratch", tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.host_path", "--quick", "--images", str(IMAGES),
         "--repeat", str(REPEAT), "--rounds", "1", "--breakdown_images", "6", "--weights", npz_path,
         "--out", str(out), "--results", str(written),
         *extra],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((written / "host_path.json").read_text()), done


def check_size(entry: dict) -> None:
    """One size's figures: rates, the breakdown, and the ratio they make."""
    assert entry["images"]["small"] == IMAGES and entry["images"]["large"] == IMAGES * REPEAT
    assert entry["breakdown_images"] == 6
    one = entry["processes_1"]
    assert one["cores"] == 1 and one["wall_large_s"] > one["wall_small_s"] > 0
    # h is images/s per core; one process on one core: the steady rate itself.
    assert entry["h_per_core"] == one["images_per_s_per_core"] == one["steady_images_per_s"] > 0
    assert entry["d_per_core"] > 0
    assert entry["h_over_d"] == pytest.approx(entry["h_per_core"] / entry["d_per_core"])
    parts = entry["breakdown_us"]
    assert list(parts) == ["read", "decode", "pipe transfer", "postprocess", "write",
                           "batching/Beam overhead (residual)", "job per image on one core"]  # fmt: skip
    assert all(parts[p] > 0 for p in ("read", "decode", "postprocess", "write"))
    # The residual is what the job costs beyond the parts measured one by one.
    assert sum(list(parts.values())[:-1]) == pytest.approx(parts["job per image on one core"])
    assert parts["job per image on one core"] == pytest.approx(1e6 / entry["h_per_core"])
    assert entry["verdict"].startswith(f"h/d {entry['h_over_d']:.2f} ")


def test_quick_run_writes_figures_and_every_row(tmp_path, npz_path):
    found, done = host_path(tmp_path, npz_path)
    assert found["benchmark"] == "host_path" and found["command"].startswith("python -m benchmarks.host_path")
    assert "forward pass is a stand-in" in found["stand_in"] and found["stand_in"] in done.stdout
    assert found["weights"]["untrained"] is True
    assert list(found["sizes"]) == ["640x480"] and "before" not in found  # --quick: one size
    check_size(found["sizes"]["640x480"])
    assert "processes_2" not in found["sizes"]["640x480"]  # --quick: one worker process only
    text = (tmp_path / "results" / "host_path.txt").read_text()
    assert text.splitlines()[0].startswith("machine: ") and "640x480: h/d " in text
    # The stand-in's outputs went through the real writers and the commit: one row per input,
    # each photo under REPEAT names, all the same file.
    folder = tmp_path / "scratch" / "images" / f"640x480-{IMAGES}-x{REPEAT}"
    photos = sorted(str(p) for p in folder.iterdir())
    assert len(photos) == IMAGES * REPEAT
    assert {os.stat(p).st_nlink for p in photos} == {REPEAT + 1}
    output = tmp_path / "scratch" / "jobs" / "640x480-1-large"
    tables = snapshot(str(output))
    assert tables.files("errors") == [] or tables.rows("errors") == 0
    rows = [row for path in tables.files("predictions") for row in pq.read_table(path).to_pylist()]
    assert sorted(row["uri"] for row in rows) == photos
    assert {row["image_id"] for row in rows} == {image_id(p) for p in photos}
    for row in rows:
        assert (row["width"], row["height"]) == (640, 480) and len(row["labels"]) == 5
        assert len(row["fc7"]) == 4096 and np.isfinite(row["fc7"]).all()


@pytest.mark.slow
def test_baseline_is_measured_beside(tmp_path, npz_path):
    # The weights named relative to where the command runs: the baseline's jobs run in its worktree.
    found, _ = host_path(tmp_path, os.path.relpath(npz_path, REPO), "--baseline", "HEAD")
    before = found["before"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert before["revision"] == head.stdout.strip()
    check_size(before["sizes"]["640x480"])
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout
    assert "host-path-baseline-" not in worktrees  # removed afterwards
    text = (tmp_path / "results" / "host_path.txt").read_text()
    assert f"before ({before['revision']})" in text
    assert os.path.isdir(tmp_path / "scratch" / "jobs-before" / "640x480-1-large" / "predictions")
