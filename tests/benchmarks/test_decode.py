"""The capacity plan's decode table: its inputs, the per-group ranges, the printed and Markdown tables."""

from __future__ import annotations

import os

from benchmarks import decode, images


def test_noise_is_what_makes_a_jpeg_large(tmp_path):
    source = images.sample_photos()[0]
    sizes = [
        os.path.getsize(images.make_noisy(str(tmp_path / f"n{sigma}.jpg"), source, (400, 300), sigma))
        for sigma in decode.NOISE.values()
    ]
    # Smooth < light noise < heavy noise, at the same pixel count and JPEG quality.
    assert sizes[0] < sizes[1] < sizes[2]


def test_best_decode_time_in_both_modes(tmp_path):
    path = images.make_noisy(str(tmp_path / "big.jpg"), images.sample_photos()[0], (1600, 1200), 4.0)
    with open(path, "rb") as handle:
        data = handle.read()
    draft, full = decode.best_decode_ms(data, True, 2), decode.best_decode_ms(data, False, 2)
    # Draft mode lets libjpeg decode this 1600×1200 JPEG at 1/4 scale (enough for 224×224): less work.
    assert 0 < draft < full


def test_rows_group_the_files_and_give_each_mode_its_range(machine, machine_line):
    entries = [
        {"group": "bundled photo", "bytes": 100_000, "draft_ms": 3.0, "full_ms": 4.0},
        {"group": "bundled photo", "bytes": 250_000, "draft_ms": 6.0, "full_ms": 6.5},
        {"group": "12 MP JPEG q90, heavy noise", "bytes": 4_200_000, "draft_ms": 41.0, "full_ms": 122.0},
    ]
    rows = decode.rows(entries)
    assert rows == [
        {"input": "bundled photo", "files": 2, "mb": [0.1, 0.25], "draft_ms": [3.0, 6.0],
         "full_ms": [4.0, 6.5]},
        {"input": "12 MP JPEG q90, heavy noise", "files": 1, "mb": [4.2, 4.2], "draft_ms": [41.0, 41.0],
         "full_ms": [122.0, 122.0]},
    ]  # fmt: skip
    result = {"repeats": 5, "rows": rows, "machine": machine}
    assert decode.table(result, markdown=True).splitlines() == [
        machine_line,
        "",
        "decode_image, resize=squash, one thread pinned to one core, best of 5 runs",
        "",
        "| input | files | MB | draft=True ms | draft=False ms |",
        "|---|---:|---:|---:|---:|",
        "| bundled photo | 2 | 0.10–0.25 | 3.0–6.0 | 4.0–6.5 |",
        "| 12 MP JPEG q90, heavy noise | 1 | 4.20 | 41.0 | 122.0 |",
    ]
