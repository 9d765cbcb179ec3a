"""benchmarks.decode_load: the model alone and beside a decoder, per way of running it; a short run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import decode_load
from tests.conftest import REPO


def result(machine: dict) -> dict:
    return {
        "machine": machine,
        "weights": {"file": "w.npz", "untrained": True},
        "cores": 2,
        "decode_ms": 10.0,
        "rate": 15.0,
        "decoder_share": 0.075,
        "modes": {
            "one call": {"streams": 1, "images_per_call": 16, "alone": 15.0, "with_decoder": 12.75},
            "free streams": {"streams": 2, "images_per_call": 8, "alone": 15.0, "with_decoder": 13.875},
        },
    }


def test_the_table_gives_each_modes_loss_against_the_decoders_share(machine, machine_line):
    text = decode_load.table(result(machine))
    assert text.startswith(machine_line)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith(("one ", "free "))}
    # one call: 1 - 12.75/15 = 0.15, twice the decoder's share; free streams: 0.075, the share itself.
    assert rows["one"][2:] == ["1", "×", "16", "15.00", "12.75", "0.150", "0.075", "2.00"]
    assert rows["free"][2:] == ["2", "×", "8", "15.00", "13.88", "0.075", "0.075", "1.00"]
    assert "10.0 ms per 12 MP photo" in text and "15.00 photos/s" in text
    assert text.endswith("\nweights: w.npz, UNTRAINED (synthesized): rates do not depend on their values")
    assert "| one call | 1 × 16 | 15.00 | 12.75 | 0.150 | 0.075 | 2.00 |" in decode_load.table(
        result(machine), markdown=True
    )


@pytest.mark.slow
def test_a_short_run_measures_both_modes(tmp_path, npz_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.decode_load", "--seconds", "2", "--weights", npz_path,
         "--out", str(tmp_path / "scratch"), "--results", str(tmp_path / "results")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads((tmp_path / "results" / "decode_load.json").read_text())
    assert found["benchmark"] == "decode_load" and found["weights"]["untrained"] is True
    cores = len(os.sched_getaffinity(0))
    assert found["cores"] == cores and list(found["modes"]) == list(decode_load.MODES)
    one, free = found["modes"]["one call"], found["modes"]["free streams"]
    assert (one["streams"], one["images_per_call"]) == (1, 16)
    assert (free["streams"], free["images_per_call"]) == (cores, max(16 // cores, 1))
    for entry in (one, free):
        assert entry["alone"] > 0 and entry["with_decoder"] > 0
    assert found["rate"] > 0 and 0 < found["decoder_share"] == pytest.approx(
        found["rate"] * found["decode_ms"] / 1000 / cores
    )
    assert (tmp_path / "results" / "decode_load.txt").read_text().startswith("machine: ")
