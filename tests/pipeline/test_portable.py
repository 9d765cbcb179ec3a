"""The portable path for real: Beam's job service and an SDK worker pool as separate processes.

This is the split Flink and Dataflow Runner v2 use. The launcher submits the pipeline to a
job service; the job service asks an EXTERNAL worker pool to start an SDK harness process,
which runs the DoFns (read, decode, VGG16, write Parquet). Its rows must equal a
DirectRunner run of the same inputs.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.contract import image_id
from tests.pipeline.conftest import BAD, GOOD
from tests.pipeline.jobs import run_job

pytestmark = pytest.mark.slow


def read(read_rows, folder, name):
    rows, files = read_rows(folder, name)
    assert files, f"no {name} shards in {folder}"
    return sorted(rows, key=lambda row: row["image_id"]), pq.read_schema(files[0]).metadata


def where(row: dict) -> tuple[str, int, int]:
    return row["uri"], row["width"], row["height"]


def test_external_worker_pool_writes_what_the_direct_runner_writes(
    photo_dir, npz_path, direct_run, job_service, worker_pool, tmp_path, read_rows
):
    direct_out, _ = direct_run
    done = run_job(
        "--input", f"{photo_dir}/*",
        "--output", tmp_path,
        "--weights", npz_path,
        "--embeddings",
        "--runner=PortableRunner",
        f"--job_endpoint={job_service.endpoint}",
        "--environment_type=EXTERNAL",
        f"--environment_config={worker_pool.endpoint}",
    )  # fmt: skip
    # Metrics travel back from the harness through the job service to the launcher.
    assert "summary: 8 inputs, 5 labelled, 3 failed (read 0, decode 3, inference 0)" in done.stdout
    # The DoFns ran in an SDK harness that the pool started, not in the launcher or job service.
    assert "Starting worker with command" in worker_pool.log.read_text()

    portable, portable_meta = read(read_rows, tmp_path, "predictions")
    direct, direct_meta = read(read_rows, direct_out, "predictions")
    assert portable_meta == direct_meta  # same provenance: weights sha256, precision, resize, ...
    expected_ids = sorted(image_id(str(photo_dir / name)) for name in GOOD)
    assert [row["image_id"] for row in portable] == [row["image_id"] for row in direct] == expected_ids
    for ours, theirs in zip(portable, direct):
        name = os.path.basename(ours["uri"])
        assert where(ours) == where(theirs)
        assert ours["uri"] == str(photo_dir / name)
        assert [x["class_index"] for x in ours["labels"]] == [x["class_index"] for x in theirs["labels"]]
        assert [x["label"] for x in ours["labels"]] == [x["label"] for x in theirs["labels"]]
        # Same TensorFlow on the same CPU; batches may be cut differently, hence a tolerance.
        np.testing.assert_allclose(
            [x["score"] for x in ours["labels"]], [x["score"] for x in theirs["labels"]], rtol=1e-4
        )
        np.testing.assert_allclose(ours["fc7"], theirs["fc7"], rtol=1e-3, atol=1e-3)

    portable_errors, _ = read(read_rows, tmp_path, "errors")
    direct_errors, _ = read(read_rows, direct_out, "errors")
    assert portable_errors == direct_errors
    assert sorted((e["uri"], e["stage"], e["error_type"]) for e in portable_errors) == sorted(
        (str(photo_dir / name), *outcome) for name, outcome in BAD.items()
    )
