"""The one command that regenerates every results file: each step's command line, and a misspelled step."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks import all as run_all
from benchmarks import results


def test_all_runs_each_step_with_relative_paths():
    argv = run_all.argv_for("near_duplicates", os.path.join(results.REPO, "output", "bench"), results.RESULTS)
    assert argv[1:] == ["-m", "benchmarks.near_duplicates", "--weights", "output/bench/vgg16_untrained.npz",
                        "--results", "benchmarks/results"]  # fmt: skip
    assert run_all.argv_for("bench", "output/bench", results.RESULTS)[-4:] == [
        "--results", "benchmarks/results", "--out", "output/bench",
    ]  # fmt: skip
    # The decoder comparison synthesizes the same weights into the scratch folder it is given.
    assert run_all.argv_for("decoders", "output/bench", results.RESULTS)[1:] == [
        "-m", "benchmarks.decoders", "--results", "benchmarks/results", "--out", "output/bench",
    ]  # fmt: skip
    # The shards benchmark labels with the same synthesized weights, in its own scratch folder.
    assert run_all.argv_for("shards", "output/bench", results.RESULTS)[1:] == [
        "-m", "benchmarks.shards", "--weights", "output/bench/vgg16_untrained.npz",
        "--results", "benchmarks/results", "--out", "output/bench",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.all", "--only", "decode,nope"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "python -m benchmarks.all: error: unknown step 'nope'; the steps are decode, decoders, bench, "
        "index_recall, pca, near_duplicates, shards, host_path, memory_budget, decode_load, watch"
    )
