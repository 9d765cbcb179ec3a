"""The GPU run: without a GPU it says so at once; with --tiny_cpu every step runs and writes its JSON."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks import gpu


def test_without_a_gpu_it_says_so_and_exits_0_within_seconds(tmp_path):
    # nvidia-smi as on a machine with the tools but no driver loaded: it fails.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--results", str(tmp_path / "results")],
        capture_output=True, text=True, env={**os.environ, "PATH": str(bin_dir)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "no NVIDIA GPU here (nvidia-smi lists none): nothing to measure; run this on a GPU machine"
    ]
    assert not (tmp_path / "results").exists()  # nothing written, nothing installed
    assert time.monotonic() - start < 30  # no TensorFlow imported: seconds even on a busy machine


def test_missing_cuda_packages_reads_tensorflows_and_cuda_extra():
    requires = [
        "numpy>=1.26",
        'nvidia-cublas-cu12<13.0,>=12.5.3.2; extra == "and-cuda"',
        'nvidia-cudnn-cu12<10.0,>=9.3.0.75; extra == "and-cuda"',
        'tensorflow-io-gcs-filesystem>=0.23.1; python_version < "3.12"',
    ]
    installed = {"numpy", "nvidia-cublas-cu12"}

    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return "1"

    # Only the and-cuda requirements count, and of those only the one not installed.
    assert gpu.missing_cuda_packages(requires, version) == ["nvidia-cudnn-cu12"]
    assert gpu.missing_cuda_packages(requires[:2], version) == []


def test_dali_missing_asks_for_the_gpu_decode_extras_distribution():
    def version(name):
        if name != "nvidia-dali-cuda120":
            raise importlib.metadata.PackageNotFoundError(name)
        return "2.4.0"

    assert gpu.dali_missing(version) is False
    assert gpu.dali_missing(lambda name: version("not " + name)) is True


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--tiny_cpu", "--out", str(folder / "out"),
         "--results", str(folder / "results")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "results" / "gpu.json").read_text()), done.stdout, folder


@pytest.mark.slow
def test_tiny_cpu_run_has_every_step_of_the_gpu_run(tiny_run):
    result, stdout, folder = tiny_run
    assert (result["benchmark"], result["tiny_cpu"]) == ("gpu", True)
    assert result["command"].startswith("python -m benchmarks.gpu --tiny_cpu")
    # --tiny_cpu hides any GPU from the children, so the model ran on the CPU on every host.
    assert result["machine"]["device"] == "CPU (no GPU visible to TensorFlow)"
    assert set(result["machine"]) >= {
        "cpu",
        "cores",
        "cpu_flags",
        "gpus",
        "tensorflow",
        "apache_beam",
        "device",
    }
    assert list(result["model"]) == ["float32", "float16", "bfloat16"]
    for precision, entry in result["model"].items():
        assert entry["precision"] == precision and list(entry["images_per_s"]) == ["1"]
        assert entry["images_per_s"]["1"] > 0 and entry["peak_device_memory_gib"] is None
    assert result["job"]["precision"] == "float32" and result["job"]["images"] == {"small": 2, "large": 4}
    assert list(result["job"]["configs"]) == [
        "subprocess", "subprocess, --decode_device gpu", "subprocess, --jit", "none", "none, --jit"
    ]  # fmt: skip
    # Decoding alone: DALI's pipeline on the CPU took every JPEG of both sizes.
    assert result["decode"]["device"] == "cpu" and list(result["decode"]["sizes"]) == ["640x480", "12mp"]
    for entry in result["decode"]["sizes"].values():
        assert entry["images"] == entry["dali_taken"] == 2
        assert entry["dali_images_per_s"] > 0 and entry["sandbox_images_per_s"] > 0
    for entry in result["job"]["configs"].values():
        assert entry["wall_small_s"] > 0 and entry["wall_large_s"] > 0
        assert entry["memory"]["total_peak_rss_gib"] > 0 and entry["peak_gpu_memory_gib"] is None
        # Two and four images are too few to time on a busy machine: a rate, or a note saying why not.
        assert entry["steady_images_per_s"] is None or entry["steady_images_per_s"] > 0
        assert entry["steady_images_per_s"] is not None or "was not slower" in entry["note"]
    # The default isolation runs a decoder process beside the job; 'none' does not.
    labels = {
        label: {p["process"] for p in e["memory"]["processes"]}
        for label, e in result["job"]["configs"].items()
    }
    assert labels["subprocess"] == {"pipeline.run", "vgg.sandbox"} and labels["none"] == {"pipeline.run"}
    # --decode_device gpu where DALI sees no GPU: the sandboxed CPU path, as without the flag.
    assert labels["subprocess, --decode_device gpu"] == {"pipeline.run", "vgg.sandbox"}
    text = (folder / "results" / "gpu.txt").read_text()
    assert text in stdout and "TINY CPU RUN (--tiny_cpu): a check of the steps, not a figure" in text
