"""`python -m pipeline.run` end to end, as a user runs it: real photos plus broken files -> Parquet.

The same inputs go through DirectRunner (in-memory), DirectRunner with two worker
processes, and PortableRunner against Beam's local job service (LOOPBACK): all three
must write the same rows. Weights are synthesized (UNTRAINED): labels are meaningless
but deterministic, which is all these tests need.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.contract import UNTRAINED_WARNING, decode_provenance, image_id
from pipeline.table import snapshot, table_provenance
from tests.conftest import REPO
from tests.pipeline.conftest import BAD, GOOD
from tests.pipeline.jobs import run_job


def rows_by_id(read_rows, folder):
    predictions, _ = read_rows(folder, "predictions")
    errors, _ = read_rows(folder, "errors")
    return {r["image_id"]: r for r in predictions}, {r["image_id"]: r for r in errors}


def test_every_input_accounted_for_once(direct_run, photo_dir, read_rows):
    out, done = direct_run
    predictions, errors = rows_by_id(read_rows, out)
    inputs = {image_id(str(p)): str(p) for p in photo_dir.iterdir()}
    assert set(predictions) | set(errors) == set(inputs)
    assert not set(predictions) & set(errors)
    rows, _ = read_rows(out, "predictions")
    assert len(rows) == len(predictions) == len(GOOD)  # no duplicate image_id
    assert {os.path.basename(r["uri"]) for r in errors.values()} == set(BAD)
    for row in errors.values():
        assert (row["stage"], row["error_type"]) == BAD[os.path.basename(row["uri"])]
        assert row["message"]
    assert "summary: 8 inputs, 5 labelled, 3 failed (read 0, decode 3, inference 0)" in done.stdout
    # Synthesized weights: said once per run, on the launcher, not by each worker nor again at the end.
    assert done.stderr.count(UNTRAINED_WARNING) == 1, done.stderr


def test_schema_and_provenance(direct_run, npz_path):
    from vgg.weights import sha256_file

    out, _ = direct_run
    found = snapshot(str(out))
    files = found.files("predictions")
    assert [re.sub("-[0-9a-f]{8}-", "-TOKEN-", os.path.basename(f)) for f in files] == [
        "part-r00001-TOKEN-00000-of-00001.parquet"
    ]
    table = pq.read_table(files[0])
    schema = table.schema
    assert schema.names == ["image_id", "uri", "width", "height", "labels", "fc7"]
    assert str(schema.field("width").type) == "int32"
    assert str(schema.field("labels").type) == (
        "list<item: struct<class_index: int32, wnid: string, label: string, score: float>>"
    )
    assert str(schema.field("fc7").type) == "fixed_size_list<item: float>[4096]"
    meta = pq.read_metadata(files[0]).metadata
    assert meta[b"vgg16.weights_sha256"].decode() == sha256_file(npz_path)
    assert meta[b"vgg16.weights_name"] == b"vgg16_untrained.npz"
    assert meta[b"vgg16.weights_untrained"] == b"true"
    assert (meta[b"vgg16.resize"], meta[b"vgg16.precision"]) == (b"squash", b"float32")
    assert pq.read_metadata(files[0]).row_group(0).column(0).compression == "ZSTD"
    # The same provenance in both tables' properties and in the commit that added the files.
    for name in ("predictions", "errors"):
        assert table_provenance(found.tables[name]) == decode_provenance(meta)
    commit = found.tables["predictions"].history()[-1]
    assert commit["vgg16.run"] == "1" and commit["vgg16.weights_sha256"] == sha256_file(npz_path)
    rows = {os.path.basename(r["uri"]): r for r in table.to_pylist()}
    assert (rows["cat.png"]["width"], rows["cat.png"]["height"]) == (451, 300)  # chelsea.png's size
    for row in rows.values():
        scores = [label["score"] for label in row["labels"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_labels_equal_vgg_predict(direct_run, photo_dir, npz_path, read_rows):
    out, _ = direct_run
    predictions, _ = rows_by_id(read_rows, out)
    images = sorted(str(photo_dir / name) for name in GOOD)
    done = subprocess.run(
        [sys.executable, "-m", "vgg.predict", "--weights", npz_path, "--json", "--fc7", *images],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        record = json.loads(line)
        row = predictions[image_id(record["uri"])]
        assert [x["class_index"] for x in row["labels"]] == [x["class_index"] for x in record["labels"]]
        assert [x["wnid"] for x in row["labels"]] == [x["wnid"] for x in record["labels"]]
        np.testing.assert_allclose(
            [x["score"] for x in row["labels"]], [x["score"] for x in record["labels"]], rtol=1e-4
        )
        np.testing.assert_allclose(row["fc7"], record["fc7"], rtol=1e-3, atol=1e-3)


def assert_same_rows(read_rows, folder_a, folder_b):
    pred_a, err_a = rows_by_id(read_rows, folder_a)
    pred_b, err_b = rows_by_id(read_rows, folder_b)
    assert set(pred_a) == set(pred_b) and err_a == err_b
    for key, row in pred_a.items():
        other = pred_b[key]
        assert [x["class_index"] for x in row["labels"]] == [x["class_index"] for x in other["labels"]]
        np.testing.assert_allclose(
            [x["score"] for x in row["labels"]], [x["score"] for x in other["labels"]], rtol=1e-4
        )
        np.testing.assert_allclose(row["fc7"], other["fc7"], rtol=1e-3, atol=1e-3)
        assert (row["uri"], row["width"], row["height"]) == (other["uri"], other["width"], other["height"])


@pytest.mark.slow
def test_multi_processing_workers(direct_run, photo_dir, npz_path, tmp_path, read_rows):
    # Two SDK worker processes: the DoFns pickle, and setup() loads the model in each.
    # The recursive pattern matches the same files as the direct run's "*" (no sub-folders;
    # "DIR/**" would also list DIR itself, as bash does: a not_a_file row).
    done = run_job(
        "--input",
        f"{photo_dir}/**/*",
        "--output",
        tmp_path,
        "--weights",
        npz_path,
        "--embeddings",
        "--direct_num_workers=2",
        "--direct_running_mode=multi_processing",
    )
    assert_same_rows(read_rows, direct_run[0], tmp_path)
    assert done.stderr.count(UNTRAINED_WARNING) == 1, done.stderr  # not once per worker process


@pytest.mark.slow
def test_portable_runner_loopback(direct_run, photo_dir, npz_path, tmp_path, job_service, read_rows):
    # The same inputs, this time from a list file (with a comment and a blank line).
    listing = tmp_path / "inputs.txt"
    listing.write_text("# the photos\n\n" + "\n".join(str(p) for p in sorted(photo_dir.iterdir())) + "\n")
    run_job(
        "--input_list",
        listing,
        "--output",
        tmp_path / "out",
        "--weights",
        npz_path,
        "--embeddings",
        "--runner=PortableRunner",
        f"--job_endpoint={job_service.endpoint}",
        "--environment_type=LOOPBACK",
    )
    assert_same_rows(read_rows, direct_run[0], tmp_path / "out")


# ------------------------------------------------------------------- fail fast


@pytest.mark.parametrize("case", ["missing_weights", "corrupt_weights", "no_match", "unwritable"])
def test_fail_fast_on_the_launcher(case, photo_dir, npz_path, tmp_path):
    out = tmp_path / "out"
    args = {"--input": f"{photo_dir}/*", "--output": out, "--weights": npz_path}
    if case == "missing_weights":
        args["--weights"] = tmp_path / "nope.npz"
        want = "nope.npz: no such weights file"
    elif case == "corrupt_weights":
        corrupt = tmp_path / "corrupt.npz"
        corrupt.write_bytes(open(npz_path, "rb").read(4096))
        args["--weights"] = corrupt
        want = "corrupt.npz: not a readable npz file"
    elif case == "no_match":
        args["--input"] = f"{photo_dir}/*.tiff"
        want = "matches no files"
    else:
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        args["--output"] = out = blocker / "out"
        want = "is not writable"
    done = run_job(*[x for kv in args.items() for x in kv], check=False)
    assert done.returncode == 2
    assert want in done.stderr and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
    assert not out.exists()
