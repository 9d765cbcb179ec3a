"""The bench's parts: the steady-rate estimate, the pinned decode rate, a job's wall and whole-tree memory."""

from __future__ import annotations

import os
import sys

import pytest

from benchmarks.bench import bench_decode, ours, steady, timed_job
from benchmarks.images import make_images


def tree(total: float) -> dict:
    return {"total_peak_rss_gib": total, "processes": [], "samples": 3}


def test_steady_rate_takes_the_fastest_wall_of_each_size():
    rounds = [
        {"wall_small_s": 10.0, "wall_large_s": 40.0, "total_peak_rss_gib": 1.7, "memory": tree(1.7)},
        {"wall_small_s": 12.0, "wall_large_s": 38.0, "total_peak_rss_gib": 1.9, "memory": tree(1.9)},
    ]
    got = steady(rounds, 60, 240)
    # 180 more images in 38 - 10 = 28 s more: 6.4286 img/s; start-up 10 - 60 / 6.4286 = 0.667 s.
    assert got["steady_images_per_s"] == pytest.approx(180 / 28)
    assert got["startup_s"] == pytest.approx(10 - 60 * 28 / 180)
    assert (got["wall_small_s"], got["wall_large_s"]) == (10.0, 38.0)
    # Memory: the whole tree of the round that peaked highest; the rounds keep their walls only.
    assert got["memory"] == tree(1.9)
    assert got["rounds"] == [
        {"wall_small_s": 10.0, "wall_large_s": 40.0, "total_peak_rss_gib": 1.7},
        {"wall_small_s": 12.0, "wall_large_s": 38.0, "total_peak_rss_gib": 1.9},
    ]
    with pytest.raises(RuntimeError, match="was not slower than the 60-image run"):
        steady([{"wall_small_s": 10.0, "wall_large_s": 9.0, "memory": tree(1.0)}], 60, 240)


def test_decode_rate_on_one_pinned_core_restores_the_cpu_set(tmp_path, monkeypatch):
    import vgg.preprocess

    before = os.sched_getaffinity(0)
    paths = make_images(str(tmp_path / "img"), (64, 48), 3)
    cores_seen = []
    decode = vgg.preprocess.decode_image

    def watched(data, **kwargs):  # the real decoder, noting the cores it may run on
        cores_seen.append(os.sched_getaffinity(0))
        return decode(data, **kwargs)

    monkeypatch.setattr(vgg.preprocess, "decode_image", watched)
    assert bench_decode(paths, passes=2) > 0
    # One warm-up decode, then 2 passes over 3 files: each allowed one core, of those it had.
    assert len(cores_seen) == 7 and all(len(cores) == 1 and cores <= before for cores in cores_seen)
    assert os.sched_getaffinity(0) == before  # the jobs started next must get every core


# A parent holding 300 MiB starts a child holding 200 MiB; both wait until both hold theirs.
PARENT = """
import subprocess, sys, time
block = b"\\x01" * (300 * 2**20)
child = subprocess.Popen([sys.executable, "-c",
    "import sys, time; block = b'\\\\x01' * (200 * 2**20); print('ready', flush=True); time.sleep(1.5)"],
    stdout=subprocess.PIPE)
child.stdout.readline()
time.sleep(1.5)
child.wait()
"""


def test_timed_job_sums_the_whole_tree_at_one_instant():
    got = timed_job([sys.executable, "-c", PARENT])
    memory = got["memory"]
    # Two processes of "python -c", one above 300 MiB and one above 200 MiB, held at the same
    # time: the tree's total is at least their sum (0.49 GiB), which neither reaches alone.
    assert [p["process"] for p in memory["processes"]] == ["python -c", "python -c"]
    parent, child = memory["processes"]
    assert parent["peak_rss_gib"] > 300 / 1024 and 200 / 1024 < child["peak_rss_gib"] < 300 / 1024
    assert memory["total_peak_rss_gib"] > 500 / 1024
    assert memory["total_peak_rss_gib"] == pytest.approx(
        parent["rss_at_total_peak_gib"] + child["rss_at_total_peak_gib"]
    )
    assert got["wall_s"] > 1.5 and memory["samples"] > 10  # a sample every 50 ms
    with pytest.raises(RuntimeError, match="failed"):
        timed_job([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="ran past its 1 s"):
        timed_job([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=1)


def test_our_job_gets_the_batch_size_the_tuned_peer_gets():
    argv = ours("in", "out", "w.npz", "--precision", "bfloat16")
    assert argv[1:3] == ["-m", "pipeline.run"]
    assert argv[argv.index("--batch_size") + 1] == "16" and argv[-2:] == ["--precision", "bfloat16"]
