"""What several benchmark tests share: a results file's machine, as `benchmarks.results.stamp` writes it."""

from __future__ import annotations

import pytest


@pytest.fixture
def machine() -> dict:
    """A machine with AVX-512 bfloat16 and no GPU: every table opens with its line."""
    return {
        "cpu": "Test CPU", "cores": 2, "device": "CPU (no GPU visible to TensorFlow)",
        "cpu_flags": {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": False,
                      "avx512_fp16": False, "amx_fp16": False},
        "gpus": [], "tensorflow": "2.21.0", "keras": "3.15.1", "apache_beam": "2.77.0",
    }  # fmt: skip


MACHINE_LINE = (
    "machine: Test CPU, 2 cores (avx2, avx512f, avx512_bf16); GPU: none; TF 2.21.0, Keras 3.15.1, "
    "Beam 2.77.0; model on CPU (no GPU visible to TensorFlow)"
)


@pytest.fixture
def machine_line() -> str:
    return MACHINE_LINE
