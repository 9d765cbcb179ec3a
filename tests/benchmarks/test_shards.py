"""benchmarks.shards on a tiny input: it runs, reads every photo both ways, and counts the files opened."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

from tests.conftest import REPO


def test_read_step_of_loose_files_and_shards(tmp_path):
    out, written = tmp_path / "bench", tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.shards", "--out", str(out), "--results", str(written)]
        + ["--images", "5", "--per_shard", "2", "--rounds", "1", "--read_only"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((written / "shards.json").read_text())
    assert results["benchmark"] == "shards" and results["command"].startswith("python -m benchmarks.shards")
    loose, shards = results["layouts"]["loose files"], results["layouts"]["tar shards (2 per shard)"]
    # 5 photos in shards of 2: 2 + 2 + 1, so 3 shards, the last one short.
    with tarfile.open(out / "inputs" / "shards" / "photos-00002.tar") as tar:
        assert tar.getnames() == ["img00004.jpg"]
    assert (loose["files"], shards["files"]) == (5, 3)
    assert loose["read"]["images"] == shards["read"]["images"] == 5
    assert loose["read"]["failed"] == shards["read"]["failed"] == 0
    # A loose file is opened once, by the reader. A shard is opened once by the reader, and
    # the first one once more by the launcher, which checks that it is a tar.
    assert (loose["read"]["files_opened"], loose["read"]["distinct_files_opened"]) == (5, 5)
    assert (shards["read"]["files_opened"], shards["read"]["distinct_files_opened"]) == (4, 3)
    assert "job" not in loose and "job" not in shards  # --read_only
    lines = done.stdout.splitlines()[1:]  # after the machine line
    assert (written / "shards.txt").read_text().splitlines()[1:5] == lines[:4]
    assert lines[0].split() == ["layout", "files", "opened", "read:", "wall", "s", "images/s"]
    assert lines[2].startswith("loose files") and lines[2].split()[2:4] == ["5", "5"]
    assert lines[3].startswith("tar shards (2 per shard)") and lines[3].split()[5:7] == ["3", "4"]
    # The docs' table comes from the same file.
    rendered = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--markdown", str(written / "shards.json")],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "| loose files | 5 | 5 |" in rendered and "| tar shards (2 per shard) | 3 | 4 |" in rendered
