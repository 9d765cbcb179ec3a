"""Shared fixtures of the pipeline tests: photo folders, a DirectRunner run, Beam services, output rows."""

from __future__ import annotations

import pathlib
import shutil
import sys
from collections import namedtuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.contract import predictions_schema
from pipeline.table import snapshot
from tests.conftest import SAMPLES
from tests.pipeline.jobs import run_job
from tests.pipeline.servers import free_port, listening, start_service, stop_service, wait_until

# The photo folder: file name -> (bundled photo it is made from, format to save it in; None: copied).
GOOD = {
    "cat.png": ("chelsea.png", "PNG"),
    "coffee.jpg": ("coffee.jpg", None),
    "astronaut.webp": ("astronaut.jpg", "WEBP"),
    "rocket.gif": ("rocket.jpg", "GIF"),
    "temple.bmp": ("china.jpg", "BMP"),
}
# Bad files beside them: file name -> the (stage, error_type) of their errors row.
BAD = {
    "notes.jpg": ("decode", "not_an_image"),
    "empty.png": ("decode", "empty"),
    "half.jpg": ("decode", "truncated"),
}
Service = namedtuple("Service", ["endpoint", "log"])
HOSTILE_NAME = "<img src=x onerror=alert(1)>.jpg"  # a legal file name that is also HTML
MAGENTA = (255, 0, 255)  # a colour no sample photo holds: easy to count on a screenshot
# Provenance as pipeline.run writes it, for tables the tests write themselves.
PROVENANCE = {
    "weights_name": "w.npz",
    "weights_sha256": "ab" * 32,
    "weights_untrained": "true",
    "resize": "squash",
    "precision": "float32",
    "top_k": "5",
    "package_version": "0.1.0",
}


def commit_output(output) -> str:
    """Commits every Parquet file in output/predictions/ and output/errors/ as one run (replacing).

    Tests write data files as the job's workers do, then commit them as its commit step
    does (pipeline.table); a table folder with no file gets an empty errors file. Returns
    the output's path.
    """
    from pipeline import table as delta
    from pipeline.contract import TABLES, decode_provenance, errors_schema

    output = str(output)
    files, schemas = {}, {}
    for table in TABLES:
        folder = pathlib.Path(output, table)
        folder.mkdir(parents=True, exist_ok=True)
        if table == "errors" and not list(folder.glob("*.parquet")):
            pq.write_table(errors_schema(provenance=PROVENANCE).empty_table(), folder / "part-empty.parquet")
        paths = sorted(folder.glob("*.parquet"))
        files[table] = [delta.describe(output, table, str(path)) for path in paths]
        schemas[table] = pq.read_schema(paths[0])
    delta.replace_with(output, files, schemas, decode_provenance(schemas["predictions"].metadata), {})
    return output


def write_predictions(
    path,
    vectors: np.ndarray,
    first: int,
    *,
    labels: bool = False,
    row_group_size: int | None = None,
    **metadata,
) -> None:
    """A predictions Parquet file like pipeline.run's holding these fc7 rows (ids id{first:05d} on).

    With `labels`, row n's one label is class n % 7 with score 1 / (n + 2); else no labels.
    `metadata` overrides PROVENANCE keys.
    """
    schema = predictions_schema(embeddings=True, provenance=PROVENANCE | metadata)
    ids = [f"id{first + i:05d}" for i in range(len(vectors))]
    columns = {
        "image_id": ids,
        "uri": [f"/photos/{i}.jpg" for i in ids],
        "width": [640] * len(ids),
        "height": [480] * len(ids),
        "labels": [
            [{"class_index": n % 7, "wnid": "n0", "label": f"label{n % 7}", "score": 1 / (n + 2)}]
            if labels
            else []
            for n in range(first, first + len(ids))
        ],
        "fc7": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), 4096),
    }
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=row_group_size)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """Five real photos in five formats and three broken files (GOOD and BAD above). Read-only."""
    folder = tmp_path_factory.mktemp("photos")
    for name, (source, fmt) in GOOD.items():
        if fmt is None:
            (folder / name).write_bytes((SAMPLES / source).read_bytes())
        else:
            Image.open(SAMPLES / source).convert("RGB").save(folder / name, fmt)
    (folder / "notes.jpg").write_text("<html>not a photo</html>")
    (folder / "empty.png").write_bytes(b"")
    data = (SAMPLES / "coffee.jpg").read_bytes()
    (folder / "half.jpg").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture(scope="session")
def direct_run(photo_dir, npz_path, tmp_path_factory):
    """`python -m pipeline.run --embeddings` on photo_dir with the DirectRunner: (output, process)."""
    out = tmp_path_factory.mktemp("direct")
    done = run_job(
        *("--input", f"{photo_dir}/*", "--output", out, "--weights", npz_path),
        *("--embeddings", "--batch_size", "4"),
    )
    return out, done


@pytest.fixture(scope="session")
def labelled_run(tmp_path_factory, npz_path):
    """One `pipeline.run --embeddings` shared by the index, search and report tests: its output folder.

    Inputs: the sample photos, a solid magenta 300x200 PNG, and a text file whose name is
    HTML (an errors row with a hostile URI).
    """
    root = tmp_path_factory.mktemp("labelled")
    inputs = root / "inputs"
    inputs.mkdir()
    for photo in SAMPLES.iterdir():
        if photo.suffix.lower() in (".jpg", ".png"):
            shutil.copy(photo, inputs / photo.name)
    Image.new("RGB", (300, 200), MAGENTA).save(inputs / "magenta.png")
    (inputs / HOSTILE_NAME).write_text("not an image <b>at all</b>")
    run_job("--input", f"{inputs}/*", "--output", root / "out", "--weights", npz_path, "--embeddings")
    return root / "out"


@pytest.fixture(scope="session")
def labelled_fc7(labelled_run):
    """(image_ids, uris, fc7 (n, 4096)) of labelled_run's predictions, in table order."""
    table = pq.read_table(
        snapshot(str(labelled_run)).files("predictions"), columns=["image_id", "uri", "fc7"]
    )
    fc7 = np.stack(table.column("fc7").to_numpy(zero_copy_only=False))
    return table.column("image_id").to_pylist(), table.column("uri").to_pylist(), fc7


@pytest.fixture(scope="session")
def built_index(labelled_run):
    """The exact index of labelled_run, built once through the CLI: its directory."""
    from pipeline.tools import index

    path = labelled_run.parent / "index"
    assert index.main(["--predictions", str(labelled_run), "--out", str(path)]) == 0
    return path


def _read_rows(output, table: str) -> tuple[list[dict], list[str]]:
    files = snapshot(str(output)).files(table)
    return [row for path in files for row in pq.read_table(path).to_pylist()], files


@pytest.fixture(scope="session")
def read_rows():
    """read_rows(output, table) -> (every row of the committed table, duplicates kept; its files)."""
    return _read_rows


@pytest.fixture(scope="session")
def job_service(tmp_path_factory):
    """Beam's local job service (what the portable runners submit to) on 127.0.0.1."""
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
        yield Service(f"127.0.0.1:{int(port_file.read_text())}", log_path)
    finally:
        stop_service(process)


@pytest.fixture(scope="session")
def worker_pool(tmp_path_factory):
    """Beam's SDK worker pool (what the SDK container runs with --worker_pool) on 127.0.0.1."""
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
        yield Service(f"127.0.0.1:{port}", log_path)
    finally:
        stop_service(process)
