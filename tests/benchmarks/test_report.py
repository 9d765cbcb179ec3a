"""The bench's arithmetic and tables: the limit L, the ratios, each target's verdict, the Markdown."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

from benchmarks.report import derive, limit, render, table


def tree(launcher: float, decoder: float) -> dict:
    return {
        "total_peak_rss_gib": launcher + decoder,
        "processes": [
            {
                "pid": 10,
                "process": "pipeline.run",
                "peak_rss_gib": launcher,
                "rss_at_total_peak_gib": launcher,
            },
            {
                "pid": 11,
                "process": "vgg.sandbox",
                "peak_rss_gib": decoder,
                "rss_at_total_peak_gib": decoder,
            },
        ],
        "samples": 100,
    }


def job(rate: float, startup: float, memory: dict) -> dict:
    return {"steady_images_per_s": rate, "startup_s": startup, "memory": memory}


def peer(rate: float) -> dict:
    process = {"pid": 20, "process": "benchmarks.peers", "peak_rss_gib": 2.8, "rss_at_total_peak_gib": 2.8}
    return job(rate, 9.0, {"total_peak_rss_gib": 2.8, "processes": [process], "samples": 100})


def bench_result() -> dict:
    machine = {
        "cpu": "Test CPU", "cores": 2, "device": "CPU (no GPU visible to TensorFlow)",
        "cpu_flags": {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": False,
                      "avx512_fp16": False, "amx_fp16": False},
        "gpus": [], "tensorflow": "2.21.0", "keras": "3.15.1", "apache_beam": "2.77.0",
    }  # fmt: skip
    result = {
        "benchmark": "bench",
        "command": "python -m benchmarks.bench",
        "date": "2025-01-01 00:00 UTC",
        "machine": machine,
        "weights": {"file": "output/bench/vgg16_untrained.npz", "sha256": "de968b64" + "0" * 56,
                    "untrained": True, "made_with": "python -m vgg.weights synth --format npz --seed 0"},
        "batch_size": 16,
        "rounds": 3,
        "model": {
            "float32": {"images_per_s": {1: 6.0, 16: 8.0}, "best": 8.0, "gflop_per_s": 247.5, "load_s": 1.3},
            "bfloat16": {"images_per_s": {1: 9.0, 16: 16.0}, "best": 16.0, "gflop_per_s": 495, "load_s": 1.4},
        },
        "sizes": {
            "640x480": {"decode_images_per_s_per_core": 700.0, "ours": job(7.6, 6.0, tree(1.72, 0.08)),
                        "stock_peer": peer(5.0), "tuned_peer": peer(7.5),
                        "ours_bfloat16": job(14.0, 5.5, tree(1.22, 0.08))},
            "12mp": {"decode_images_per_s_per_core": 80.0, "ours": job(7.0, 5.6, tree(1.8, 0.1)),
                     "stock_peer": peer(5.0), "tuned_peer": peer(6.0)},
        },
        "threads": {"threads_1": tree(1.72, 0.08), "threads_4": tree(2.16, 0.08)},
    }  # fmt: skip
    result["derived"] = derive(result)
    return result


def test_limit():
    # 2 cores decoding 700/s each and a model at 8/s: 1 / (1/8 + 1/1400) = 7.9545 images/s.
    assert limit(8.0, 2, 700.0) == pytest.approx(1 / (0.125 + 1 / 1400)) == pytest.approx(7.954545)
    # Decoding for free (d → ∞) leaves the model's rate; a slow decoder pulls L far below it.
    assert limit(8.0, 2, 1e12) == pytest.approx(8.0) and limit(8.0, 2, 2.0) == pytest.approx(
        1 / (1 / 8 + 1 / 4)
    )


def test_ratios_and_targets():
    derived = bench_result()["derived"]
    small, big = derived["sizes"]["640x480"], derived["sizes"]["12mp"]
    # 640x480: L = 7.9545; ours 7.6 → 0.9554 of L; against the tuned peer 7.6 / 7.5, the stock 7.6 / 5.
    assert small["L"] == pytest.approx(7.954545)
    assert small["ours/L"] == pytest.approx(7.6 / 7.954545)
    assert (small["ours/tuned_peer"], small["ours/stock_peer"], small["ours/a"]) == pytest.approx(
        (7.6 / 7.5, 1.52, 0.95)
    )
    # bfloat16: L with the bfloat16 model (16/s): 1 / (1/16 + 1/1400) = 15.819; 14 / 15.819 = 0.885.
    assert small["L_bfloat16"] == pytest.approx(15.81921) and small[
        "ours_bfloat16/L_bfloat16"
    ] == pytest.approx(0.885)
    assert small["ours_bfloat16/a"] == pytest.approx(14 / 8)
    # 12 MP: L = 1 / (1/8 + 1/160) = 7.619; no bfloat16 job there, so no bfloat16 ratios.
    assert big["L"] == pytest.approx(7.619048) and "L_bfloat16" not in big
    verdicts = [(v["target"], v["met"], v["missed_by"]) for v in derived["targets"]]
    assert verdicts == [
        ("ours / tuned peer >= 1.00 at 640x480", True, None),
        # 7 / 6 = 1.1667 against 1.30: short by (1.30 - 1.1667) / 1.30 = 10.26%.
        ("ours / tuned peer >= 1.30 at 12mp", False, pytest.approx((1.3 - 7 / 6) / 1.3)),
        ("ours / L >= 0.95 at 640x480", True, None),
        # 7 / 7.619 = 0.91875 against 0.95: short by 3.29%.
        ("ours / L >= 0.95 at 12mp", False, pytest.approx((0.95 - 0.91875) / 0.95)),
        # The float32 tree peaks at 1.9 GiB (12 MP) = 2.040 GB: over 1.8 GB by 13.3%.
        ("float32 job's whole tree <= 1.8 GB", False, pytest.approx((1.9 * 2**30 / 1e9 - 1.8) / 1.8)),
    ]


def test_each_size_is_bounded_by_the_bare_model_of_its_own_rounds():
    result = bench_result()
    # The bench measures the bare model in every round of every size; the machine slowed
    # before the 12 MP rounds: their bare model ran at 7.0, and 12 MP's L comes from it.
    slower = {"images_per_s": {1: 5.0, 16: 7.0}, "best": 7.0, "gflop_per_s": 216.6, "load_s": 1.3}
    result["sizes"]["640x480"]["model"] = {
        "float32": result["model"]["float32"],
        "bfloat16": result["model"]["bfloat16"],
    }
    result["sizes"]["12mp"]["model"] = {"float32": slower, "bfloat16": result["model"]["bfloat16"]}
    result["derived"] = derive(result)
    small, big = result["derived"]["sizes"]["640x480"], result["derived"]["sizes"]["12mp"]
    assert small["L"] == pytest.approx(7.954545)  # the 640x480 rounds' 8.0, as before
    # 12 MP: 1 / (1/7 + 1/160) = 6.7066; ours 7.0 → ours/L 1.0438, ours/a 1.0.
    assert big["L"] == pytest.approx(1 / (1 / 7 + 1 / 160)) and big["ours/a"] == pytest.approx(1.0)
    assert big["ours/L"] == pytest.approx(7 * (1 / 7 + 1 / 160))
    rows = [" ".join(line.split()) for line in table(result).splitlines()]
    assert (
        "12mp (a) bare model float32, best 7.00" in rows
        and "640x480 (a) bare model float32, best 8.00" in rows
    )
    assert any("3 interleaved rounds (the bare model once in each round of each size)" in row for row in rows)
    # Results written before the bench measured it per size: the one bare model bounds every size.
    assert "(a) bare model float32, best" not in table(bench_result())


def test_table():
    text = table(bench_result())
    assert text.splitlines()[0] == (
        "machine: Test CPU, 2 cores (avx2, avx512f, avx512_bf16); GPU: none; TF 2.21.0, Keras 3.15.1, "
        "Beam 2.77.0; model on CPU (no GPU visible to TensorFlow)"
    )
    assert (
        "(a) bare model float32: best 8.0 img/s = 248 GFLOP/s (b1: 6.0, b16: 8.0); load 1.3 s" in text
        and "(a) counts 30.94 GFLOP per 224×224 image (multiply-adds twice)" in text
    )
    rows = [" ".join(line.split()) for line in text.splitlines()]
    assert "640x480 L, float32 on 2 cores 7.95" in rows
    assert "640x480 (c) ours float32 7.60 6.0 1.80" in rows
    assert "12mp (b) tuned peer 6.00 9.0 2.80" in rows
    assert "12mp (c) ours float32 1.90 pipeline.run 1.80 + vgg.sandbox 0.10" in rows
    assert "640x480 ours, threads 4 2.24 pipeline.run 2.16 + vgg.sandbox 0.08" in rows
    assert "ours / tuned peer >= 1.30 at 12mp 1.167 missed by 10.3%" in rows
    assert "float32 job's whole tree <= 1.8 GB 2.04 GB missed by 13.3%" in rows
    assert (
        "640x480: ours/L = 0.955, ours/tuned peer = 1.013, ours/stock peer = 1.520, ours/a = 0.950; "
        "bfloat16: L = 15.82, ours/L = 0.885, ours/a(float32) = 1.750"
    ) in text


def test_markdown_from_the_json_file_is_the_same_figures(tmp_path):
    result = bench_result()
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))  # batch sizes become strings, as in a written file
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--markdown", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == render(json.loads(path.read_text()), markdown=True)
    assert "| 640x480 | (c) ours float32 | 7.60 | 6.0 | 1.80 |" in done.stdout
    assert "| ours / L >= 0.95 at 12mp | 0.919 | missed by 3.3% |" in done.stdout
    assert (
        "- (a) bare model float32: best 8.0 img/s = 248 GFLOP/s (b1: 6.0, b16: 8.0); load 1.3 s"
        in done.stdout
    )
    assert done.stdout.rstrip().endswith("Measured with `python -m benchmarks.bench` (2025-01-01 00:00 UTC).")


def test_report_refuses_what_is_not_a_results_file(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"benchmark": "nope"}')
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {path}: not a benchmark results file: 'benchmark' is 'nope', expected one of "
        "['bench', 'decode', 'decode_load', 'decoders', 'gpu', 'host_path', 'index_recall', 'memory_budget', "
        "'near_duplicates', 'pca', 'shards', 'watch', 'watch_flink']"
    ]


def test_the_docs_tables_are_the_committed_results_rendered():
    """Every table docs/benchmarks.md shows under a `benchmarks.report --markdown FILE` line is
    that file rendered now: no figure in the docs is typed in by hand, none goes stale."""
    repo = pathlib.Path(__file__).resolve().parents[2]
    docs = (repo / "docs" / "benchmarks.md").read_text()
    shown = re.findall(
        r"^`python -m benchmarks\.report --markdown (benchmarks/results/\w+\.json)`:$", docs, re.M
    )
    results = repo / "benchmarks" / "results"
    committed = sorted(p.relative_to(repo).as_posix() for p in results.glob("*.json"))
    assert sorted(shown) == committed  # each results file is shown, once
    for name in shown:
        rendered = render(json.loads((repo / name).read_text()), markdown=True)
        assert f"`python -m benchmarks.report --markdown {name}`:\n\n{rendered}\n" in docs, name
