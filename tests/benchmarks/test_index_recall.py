"""One index_recall run writes its figures as JSON; the suite's table reads them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.index_recall import table

pytestmark = pytest.mark.slow


def test_an_exact_index_has_recall_one_and_its_figures_go_to_json(tmp_path, machine, machine_line):
    path = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.index_recall", "--n", "3000", "--dim", "0", "--queries", "20",
         "--json", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads(path.read_text())
    # 3,000 vectors is below --exact_max: a flat index, so its top 10 is the exact top 10.
    assert (run["build"]["kind"], run["build"]["index_key"], run["recall"]) == ("exact", "Flat", 1.0)
    # Flat 4096-d float32: 16 KiB per vector, plus the ids file.
    assert run["build"]["index_bytes"] >= 3000 * 4096 * 4 and run["build"]["pca"] is None
    assert run["recall_vs_full"] is None  # no PCA: the index's space is the 4096-d space
    assert run["ms_single_query"] > 0 and run["ms_per_query_batch"] > 0 and run["peak_rss_mib"] > 0
    assert "recall@10 vs exact search in the index's space: 1.0000" in done.stdout
    result = {"machine": machine, "runs": {"exact, 3,000": run}}
    rows = table(result, markdown=True).splitlines()
    assert rows[:2] == [machine_line, ""]  # the machine opens every table
    rows = rows[2:]
    assert rows[2].startswith("| run | index | search params | recall@10 | vs 4096-d | B/vector |")
    assert rows[4].startswith("| exact, 3,000 | Flat |  | 1.0000 |  | ")
