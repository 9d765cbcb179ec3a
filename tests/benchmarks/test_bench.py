"""The benchmark's arithmetic and its parts: the steady-rate estimate, the ratios, the table."""

from __future__ import annotations

import pytest

from benchmarks.bench import bench_decode, bench_model, make_images, steady, timed_job
from benchmarks.report import ratios, report


def test_steady_rate_takes_the_fastest_wall_of_each_size():
    runs = [
        {"wall_small_s": 10.0, "wall_large_s": 40.0, "peak_rss_gib": 1.7},
        {"wall_small_s": 12.0, "wall_large_s": 38.0, "peak_rss_gib": 1.8},
    ]
    got = steady(runs, 60, 240)
    # 180 more images in 38 - 10 = 28 s more: 6.4286 img/s; start-up 10 - 60 / 6.4286 = 0.667 s.
    assert got["steady_images_per_s"] == pytest.approx(180 / 28)
    assert got["startup_s"] == pytest.approx(10 - 60 * 28 / 180)
    assert (got["wall_small_s"], got["wall_large_s"], got["peak_rss_gib"]) == (10.0, 38.0, 1.8)
    assert got["rounds"] == runs
    with pytest.raises(RuntimeError, match="was not slower than the 60-image run"):
        steady([{"wall_small_s": 10.0, "wall_large_s": 9.0, "peak_rss_gib": 1.0}], 60, 240)


def _results():
    def job(rate, startup, rss):
        return {"steady_images_per_s": rate, "startup_s": startup, "peak_rss_gib": rss}

    return {
        "machine": {"cpu": "Test CPU", "cores": 2, "tensorflow": "2.x"},
        "model": {
            "float32": {"images_per_s": {1: 6.0, 16: 8.0}, "best": 8.0, "load_s": 1.3, "device": "CPU"},
            "bfloat16": {"images_per_s": {1: 9.0, 16: 16.0}, "best": 16.0, "load_s": 1.4, "device": "CPU"},
        },
        "sizes": {
            "640x480": {
                "decode_images_per_s_per_core": 700.0,
                "ours": job(7.6, 6.0, 1.75),
                "peer": job(5.0, 10.0, 2.8),
                "ours_bfloat16": job(14.0, 5.5, 1.6),
            }
        },
        "memory": {"threads_1": 1.75, "threads_4": 2.2},
    }


def test_ratios_and_table():
    results = _results()
    # c/a = 7.6 / 8.0; c/b = 7.6 / 5.0; bfloat16 pipeline over the float32 bare model = 14 / 8.
    want = {"c/a": 0.95, "c/b": 1.52, "bf16_pipeline/a": 1.75}
    assert ratios(results) == {"640x480": pytest.approx(want)}
    text = report(results)
    assert "(a) bare model float32: best 8.0 img/s (b1: 6.0, b16: 8.0); load 1.3 s" in text
    assert "640x480   (c) pipeline float32         7.6        6.0        1.75" in text
    assert "640x480   (b) peer RunInference        5.0       10.0        2.80" in text
    assert "640x480: c/a = 0.950, c/b = 1.520, bf16_pipeline/a = 1.750" in text
    assert "peak RSS by threads: threads_1 1.75 GiB, threads_4 2.20 GiB" in text


def test_parts_measure_something(npz_path, tmp_path):
    paths = make_images(str(tmp_path / "img"), (64, 48), 3)
    assert bench_decode(paths) > 0
    model = bench_model(npz_path, [1, 2], "float32", seconds=0.0)
    assert set(model["images_per_s"]) == {1, 2} and model["best"] == max(model["images_per_s"].values()) > 0
    assert model["device"].startswith("CPU") and model["load_s"] > 0
    # At least the child's own 300 MiB. (Linux also counts this process's RSS at fork into
    # the child's peak, which is why the benchmark itself never loads a model.)
    wall, rss_gib = timed_job(["python3", "-c", "bytearray(300 * 2**20)"])
    assert wall > 0 and rss_gib > 0.29
    with pytest.raises(RuntimeError, match="failed"):
        timed_job(["python3", "-c", "raise SystemExit(3)"])
