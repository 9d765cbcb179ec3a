"""The bare-model benchmark: VGG16's FLOP count and one tiny measurement, on whatever device this host has."""

from __future__ import annotations

import pytest

from benchmarks.model import FLOPS_PER_IMAGE, bench_model


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
