"""The bare-model benchmark: VGG16's FLOP count and one tiny measurement, on whatever device this host has."""

from __future__ import annotations

import pytest

from benchmarks.model import FLOPS_PER_IMAGE, bench_model, fastest


def test_flops_per_image():
    # Convs: 224² · (3·3·3·64 + 3·3·64·64) + 112² · (3·3·64·128 + 3·3·128·128) + ... = 15,346,630,656
    # multiply-adds; dense: 25088·4096 + 4096·4096 + 4096·1000 = 123,633,664. Twice their sum:
    assert FLOPS_PER_IMAGE == 2 * (15_346_630_656 + 123_633_664) == 30_940_528_640


def test_bench_model_reports_rates_flops_and_the_device(npz_path):
    from vgg.inference import configure_devices

    got = bench_model(npz_path, [1, 2], "float32", seconds=0.0)
    assert set(got["images_per_s"]) == {1, 2}
    assert got["best"] == max(got["images_per_s"].values()) > 0
    assert got["gflop_per_s"] == pytest.approx(got["best"] * 30.940528640)
    # Device-agnostic: the device is whatever TensorFlow gives this host, and the peak GPU
    # memory is reported exactly when that device is a GPU.
    assert got["device"] == configure_devices()
    assert (got["peak_device_memory_gib"] is None) == (not got["device"].startswith("GPU"))
    assert (got["precision"], got["jit"]) == ("float32", False) and got["load_s"] > 0


def test_fastest_keeps_each_batch_size_best_rate_and_every_round():
    def run(b1, b16, load, device="CPU"):
        return {"precision": "float32", "jit": False, "load_s": load, "images_per_s": {1: b1, 16: b16},
                "best": max(b1, b16), "gflop_per_s": 0.0, "peak_device_memory_gib": None,
                "device": device}  # fmt: skip

    # The second round was slowed at batch 16 (another process on the cores); the first at batch 1.
    got = fastest([run(2.0, 4.0, 3.1), run(2.5, 2.3, 2.2)])
    assert got["images_per_s"] == {1: 2.5, 16: 4.0} and got["best"] == 4.0 and got["load_s"] == 2.2
    assert got["gflop_per_s"] == pytest.approx(4.0 * 30.940528640)
    assert got["rounds"] == [{1: 2.0, 16: 4.0}, {1: 2.5, 16: 2.3}]
    assert got["peak_device_memory_gib"] is None and got["device"] == "CPU"
