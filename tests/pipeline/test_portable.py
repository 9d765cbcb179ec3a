"""The portable path for real: Beam's job service and an SDK worker pool as separate processes.

This is the split Flink and Dataflow Runner v2 use. The launcher submits the pipeline to a
job service; the job service asks an EXTERNAL worker pool to start an SDK harness process,
which runs the DoFns (read, decode, VGG16, write Parquet). Its rows must equal a
DirectRunner run of the same inputs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.io import image_id
from tests.conftest import SAMPLES
from tests.pipeline.jobs import run_job
from tests.pipeline.servers import free_port, listening

PHOTOS = {"astronaut.jpg": (512, 512), "chelsea.png": (451, 300), "coffee.jpg": (600, 400)}
BROKEN = "broken.jpg"  # text with a .jpg name
START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("portable-inputs")
    for name in PHOTOS:
        (folder / name).write_bytes((SAMPLES / name).read_bytes())
    (folder / BROKEN).write_text("not a photo\n")
    return folder


def start_service(command: list[str], log_path, cwd) -> subprocess.Popen:
    """Starts a Beam service in its own process group, with the venv's python first on PATH.

    The worker pool starts each SDK harness as `python -c ...` looked up on PATH, so that
    `python` must be the one that has this project installed.
    """
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_service(process: subprocess.Popen) -> None:
    # SIGKILL to the whole group: these gRPC servers outlive SIGTERM, and the group also
    # holds any SDK harness the pool started. Nothing of theirs needs a clean shutdown.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def wait_until(ready, process: subprocess.Popen, log_path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not listening after {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def job_service(tmp_path_factory):
    """Beam's local job service on localhost; yields (endpoint, log path)."""
    folder = tmp_path_factory.mktemp("job-service")
    port_file, log_path = folder / "port", folder / "job_service.log"
    process = start_service(
        [
            sys.executable,
            "-m",
            "apache_beam.runners.portability.local_job_service_main",
            "--port=0",  # the service picks a free port and writes it to port_file
            f"--port_file={port_file}",
            f"--staging_dir={folder / 'staging'}",
        ],
        log_path,
        cwd=folder,
    )
    try:
        wait_until(port_file.exists, process, log_path, "the job service")
        yield f"127.0.0.1:{int(port_file.read_text())}", log_path
    finally:
        stop_service(process)


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory):
    """Beam's SDK worker pool (what the SDK container runs with --worker_pool); yields (endpoint, log)."""
    folder = tmp_path_factory.mktemp("worker-pool")
    log_path = folder / "worker_pool.log"
    port = free_port()
    process = start_service(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
        log_path,
        cwd=folder,  # not the repository: the harness must import the installed vgg and pipeline
    )
    try:
        wait_until(lambda: listening(port), process, log_path, "the worker pool")
        yield f"127.0.0.1:{port}", log_path
    finally:
        stop_service(process)


@pytest.fixture(scope="module")
def direct_out(photo_dir, npz_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("direct-out")
    run_job("--input", f"{photo_dir}/*", "--output", out, "--weights", npz_path, "--embeddings")
    return out


def read(folder, name):
    files = sorted(folder.glob(f"{name}-*-of-*.parquet"))
    assert files, f"no {name} shards in {folder}"
    table = pq.ParquetDataset([str(f) for f in files]).read()
    return sorted(table.to_pylist(), key=lambda row: row["image_id"]), table.schema.metadata


def where(row: dict) -> tuple[str, int, int]:
    return row["uri"], row["width"], row["height"]


def test_external_worker_pool_writes_what_the_direct_runner_writes(
    photo_dir, npz_path, direct_out, job_service, worker_pool, tmp_path
):
    job_endpoint, _ = job_service
    pool_endpoint, pool_log = worker_pool
    done = run_job(
        "--input", f"{photo_dir}/*",
        "--output", tmp_path,
        "--weights", npz_path,
        "--embeddings",
        "--runner=PortableRunner",
        f"--job_endpoint={job_endpoint}",
        "--environment_type=EXTERNAL",
        f"--environment_config={pool_endpoint}",
    )  # fmt: skip
    # Metrics travel back from the harness through the job service to the launcher.
    assert "summary: 4 inputs, 3 labelled, 1 failed (read 0, decode 1, inference 0)" in done.stdout
    # The DoFns ran in an SDK harness that the pool started, not in the launcher or job service.
    assert "Starting worker with command" in pool_log.read_text()

    portable, portable_meta = read(tmp_path, "predictions")
    direct, direct_meta = read(direct_out, "predictions")
    assert portable_meta == direct_meta  # same provenance: weights sha256, precision, resize, ...
    expected_ids = sorted(image_id(str(photo_dir / name)) for name in PHOTOS)
    assert [row["image_id"] for row in portable] == [row["image_id"] for row in direct] == expected_ids
    for ours, theirs in zip(portable, direct):
        name = os.path.basename(ours["uri"])
        assert where(ours) == where(theirs) == (str(photo_dir / name), *PHOTOS[name])
        assert [x["class_index"] for x in ours["labels"]] == [x["class_index"] for x in theirs["labels"]]
        assert [x["label"] for x in ours["labels"]] == [x["label"] for x in theirs["labels"]]
        # Same TensorFlow on the same CPU; batches may be cut differently, hence a tolerance.
        np.testing.assert_allclose(
            [x["score"] for x in ours["labels"]], [x["score"] for x in theirs["labels"]], rtol=1e-4
        )
        np.testing.assert_allclose(ours["fc7"], theirs["fc7"], rtol=1e-3, atol=1e-3)

    portable_errors, _ = read(tmp_path, "errors")
    direct_errors, _ = read(direct_out, "errors")
    assert portable_errors == direct_errors
    assert [(e["uri"], e["stage"], e["error_type"]) for e in portable_errors] == [
        (str(photo_dir / BROKEN), "decode", "not_an_image")
    ]
