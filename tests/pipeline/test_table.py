"""pipeline.table: the two Delta tables, a run's commit in its order, what a reader sees between the steps."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import table as delta
from pipeline.contract import error_row, errors_schema, predictions_schema
from tests.pipeline.conftest import PROVENANCE


def data_file(output, table: str, name: str, ids: list[str]) -> delta.DataFile:
    """A data file of `table` holding rows for these ids, written where a worker writes it."""
    folder = output / table
    folder.mkdir(parents=True, exist_ok=True)
    if table == "predictions":
        schema = predictions_schema(embeddings=False, provenance=PROVENANCE)
        rows = [{"image_id": i, "uri": f"/p/{i}", "width": 1, "height": 1, "labels": []} for i in ids]
    else:
        schema = errors_schema(provenance=PROVENANCE)
        rows = [error_row(i, f"/p/{i}", "decode", "truncated", "cut") for i in ids]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / name)
    return delta.describe(str(output), table, str(folder / name))


def run_commit(output, run: int, predictions: list[str], errors: list[str], *, resume=False, retry=False):
    files = {
        "predictions": [data_file(output, "predictions", f"part-r{run:05d}-p.parquet", predictions)],
        "errors": [data_file(output, "errors", f"part-r{run:05d}-e.parquet", errors)],
    }
    return delta.RunCommit(
        output=str(output),
        run=run,
        files=files,
        replace_errors=not resume or retry,
        replace_predictions=not resume,
        schemas={
            "predictions": predictions_schema(embeddings=False, provenance=PROVENANCE),
            "errors": errors_schema(provenance=PROVENANCE),
        },
        provenance=PROVENANCE,
    )


def ids(found: delta.Snapshot, table: str) -> list[str]:
    files = found.files(table)
    return sorted(pq.read_table(files).column("image_id").to_pylist()) if files else []


def commit(spec) -> None:
    delta.commit_errors(spec, {})
    delta.commit_predictions(spec, {})


def test_between_the_two_commits_readers_see_the_last_committed_run(tmp_path):
    commit(run_commit(tmp_path, 1, ["a"], ["x"]))
    # Run 2 (--resume --retry_errors) retried x, which worked: killed after its errors commit.
    second = run_commit(tmp_path, 2, ["x"], [], resume=True, retry=True)
    assert delta.commit_errors(second, {})
    found = delta.snapshot(str(tmp_path))
    assert (found.run, found.pending) == (1, 2)
    assert (ids(found, "predictions"), ids(found, "errors")) == (["a"], ["x"])  # run 1, whole
    # The next run first completes run 2 from the record its errors commit left.
    assert delta.roll_forward(str(tmp_path)) == 2
    found = delta.snapshot(str(tmp_path))
    assert (found.run, found.pending) == (2, 0)
    assert (ids(found, "predictions"), ids(found, "errors")) == (["a", "x"], [])
    assert delta.roll_forward(str(tmp_path)) == 0  # nothing left to complete


def test_a_retried_step_commits_nothing_twice(tmp_path):
    spec = run_commit(tmp_path, 1, ["a"], [])
    commit(spec)
    versions = [delta.open_table(str(tmp_path / t)).version() for t in ("predictions", "errors")]
    assert not delta.commit_errors(spec, {}) and not delta.commit_predictions(spec, {})
    assert [delta.open_table(str(tmp_path / t)).version() for t in ("predictions", "errors")] == versions
    assert ids(delta.snapshot(str(tmp_path)), "predictions") == ["a"]


def test_a_fresh_run_replaces_and_resume_appends(tmp_path):
    commit(run_commit(tmp_path, 1, ["a", "b"], ["x"]))
    commit(run_commit(tmp_path, 2, ["c"], [], resume=True))
    found = delta.snapshot(str(tmp_path))
    assert (ids(found, "predictions"), ids(found, "errors")) == (["a", "b", "c"], ["x"])
    commit(run_commit(tmp_path, 3, ["d"], ["y"]))
    found = delta.snapshot(str(tmp_path))
    assert (ids(found, "predictions"), ids(found, "errors")) == (["d"], ["y"])
    assert delta.next_run(str(tmp_path)) == 4


def test_cleanup_deletes_only_what_no_version_uses_and_sets_the_properties(tmp_path):
    commit(run_commit(tmp_path, 1, ["a"], ["x"]))
    commit(run_commit(tmp_path, 2, ["b"], []))  # replaces run 1's files
    stray = data_file(tmp_path, "predictions", "part-r00009-never-committed.parquet", ["z"])
    delta.clean(str(tmp_path), PROVENANCE)
    on_disk = sorted(p.name for p in (tmp_path / "predictions").glob("*.parquet"))
    assert on_disk == ["part-r00002-p.parquet"] and stray.path not in on_disk
    found = delta.snapshot(str(tmp_path))
    assert delta.table_provenance(found.tables["predictions"]) == PROVENANCE
    assert ids(found, "predictions") == ["b"]


def test_a_run_with_a_missing_shard_is_not_committed(tmp_path):
    folder = tmp_path / "predictions"
    folder.mkdir()
    for n in (0, 2):  # of 3: shard 1 is missing
        (folder / f"part-r00001-tok-{n:05d}-of-00003.parquet").write_bytes(b"x")
    with pytest.raises(delta.TableError, match="incomplete set of shards"):
        delta.run_files(str(tmp_path), "predictions", 1, "tok")
    (folder / "part-r00001-tok-00001-of-00003.parquet").write_bytes(b"x")
    assert len(delta.run_files(str(tmp_path), "predictions", 1, "tok")) == 3
    assert delta.run_files(str(tmp_path), "predictions", 1, "other") == []


def test_a_damaged_log_is_a_table_error_not_a_traceback(tmp_path):
    commit(run_commit(tmp_path, 1, ["a"], []))
    log = sorted((tmp_path / "predictions" / "_delta_log").glob("*.json"))[0]
    log.write_text("{not json")
    with pytest.raises(delta.TableError, match="is not a readable Delta table"):
        delta.snapshot(str(tmp_path))


def test_s3_options_come_from_the_jobs_flags_before_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    options = delta.storage_options("s3://b/out", {"s3_endpoint_url": "http://127.0.0.1:5000"})
    # deltalake lets AWS_ENDPOINT_URL_S3 win over AWS_ENDPOINT_URL: both name the flag's endpoint.
    assert options["AWS_ENDPOINT_URL"] == options["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:5000"
    assert options["AWS_ALLOW_HTTP"] == "true"
    assert delta.storage_options("s3://b/out")["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9"
    assert delta.storage_options("/local/out", {"s3_endpoint_url": "x"}) == {}
