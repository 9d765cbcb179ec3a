"""The bare-model benchmark: VGG16's FLOP count and one tiny measurement, on whatever device this host has."""

from __future__ import annotations

import pytest

from benchmarks.model import FLOPS_PER_IMAGE, bench_model, fastest
from vgg.architecture import CPU_CONV_BATCH


def test_flops_per_image():
    # Convs: 224² · (3·3·3·64 + 3·3·64·64) + 112² · (3·3·64·128 + 3·3·128·128) + ... = 15,346,630,656
    # multiply-adds; dense: 25088·4096 + 4096·4096 + 4096·1000 = 123,633,664. Twice their sum:
    assert FLOPS_PER_IMAGE == 2 * (15_346_630_656 + 123_633_664) == 30_940_528_640


def test_bench_model_reports_rates_flops_and_the_device(npz_path):
    from vgg.inference import configure_devices

    got = bench_model(npz_path, [1, 2], "float32", seconds=0.0)
    assert set(got["images_per_s"]) == {1, 2}
    assert got["best"] == max(got["images_per_s"].values()) > 0
    # Each batch size ran with the job's conv slices ("auto") and on the whole batch; the
    # bare model's rate is the faster of the two.
    auto = "whole" if configure_devices().startswith("GPU") else str(CPU_CONV_BATCH)  # GPU: once
    assert set(got["by_conv_batch"]) == {auto, "whole"}
    for b in (1, 2):
        assert got["images_per_s"][b] == max(rates[b] for rates in got["by_conv_batch"].values())
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
                "device": device,
                "by_conv_batch": {"whole": {1: b1, 16: b16}, "2": {1: b1 / 2, 16: b16}}}  # fmt: skip

    # The second round was slowed at batch 16 (another process on the cores); the first at batch 1.
    got = fastest([run(2.0, 4.0, 3.1), run(2.5, 2.3, 2.2)])
    assert got["images_per_s"] == {1: 2.5, 16: 4.0} and got["best"] == 4.0 and got["load_s"] == 2.2
    assert got["gflop_per_s"] == pytest.approx(4.0 * 30.940528640)
    assert got["rounds"] == [{1: 2.0, 16: 4.0}, {1: 2.5, 16: 2.3}]
    assert got["by_conv_batch"] == {"whole": {1: 2.5, 16: 4.0}, "2": {1: 1.25, 16: 4.0}}
    assert got["peak_device_memory_gib"] is None and got["device"] == "CPU"
