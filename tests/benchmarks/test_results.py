"""What every results file holds: the command that wrote it, the machine, repo-relative paths."""

from __future__ import annotations

import json
import os

from benchmarks import results


def test_paths_are_relative_to_the_repo():
    assert results.relative(os.path.join(results.REPO, "benchmarks", "results", "bench.json")) == (
        "benchmarks/results/bench.json"
    )
    assert results.relative("/tmp/elsewhere/x.json") == "/tmp/elsewhere/x.json"  # outside: kept absolute


def test_command_is_what_a_user_types():
    argv = ["--index_key", "IVF1024,PQ64x4fs,Refine(SQ8)", "--images", "photos/*.jpg", "--n", "100000"]
    assert results.command("benchmarks.index_recall", argv) == (
        "python -m benchmarks.index_recall --index_key 'IVF1024,PQ64x4fs,Refine(SQ8)' "
        "--images 'photos/*.jpg' --n 100000"
    )


def test_stamp_and_write(tmp_path):
    # The cores are those this process may run on, not the machine's: pinned to one, it says 1.
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        stamp = results.stamp("decode", "benchmarks.decode", ["--repeats", "5"], device=None)
    finally:
        os.sched_setaffinity(0, before)
    assert (stamp["benchmark"], stamp["command"]) == ("decode", "python -m benchmarks.decode --repeats 5")
    machine = stamp["machine"]
    assert machine["cores"] == 1 and machine["device"] is None
    assert set(machine["cpu_flags"]) == {
        "avx2",
        "avx512f",
        "avx512_bf16",
        "amx_bf16",
        "avx512_fp16",
        "amx_fp16",
    }
    assert machine["tensorflow"] and machine["apache_beam"] and machine["cpu"]
    paths = results.write({**stamp, "x": 1}, "table\n\n", str(tmp_path / "r"), "decode")
    assert [os.path.basename(p) for p in paths] == ["decode.json", "decode.txt"]
    assert json.loads(open(paths[0]).read())["x"] == 1
    assert open(paths[1]).read() == "table\n"  # exactly what was printed, one final newline
