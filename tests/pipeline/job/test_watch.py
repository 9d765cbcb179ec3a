"""--watch's parts: its options, the listing of each poll, what is skipped, windows' runs and commits.

The whole job on a streaming runner, as a user runs it: tests/pipeline/test_watch.py.
"""

from __future__ import annotations

import dataclasses
import os
import time

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

from pipeline import ConfigError
from pipeline import table as delta
from pipeline.contract import (
    ERRORS,
    PREDICTIONS,
    error_row,
    errors_schema,
    image_id,
    path_uri,
    predictions_schema,
)
from pipeline.job import watch
from pipeline.job.decode import DecodeConfig, DecodeImage
from pipeline.job.options import parse_args
from tests.conftest import SAMPLES
from tests.pipeline.conftest import PROVENANCE

BASE = ["--input", "in/*", "--output", "out", "--weights", "w.npz"]
SUB = "projects/my-project/subscriptions/inbox"


# ------------------------------------------------------------------- options


def test_watch_options_and_their_defaults():
    args, _ = parse_args([*BASE, "--watch"])
    assert (args.poll_interval_s, args.window_s, args.settle_s, args.window_shards) == (60, 60, 5, 1)
    args, _ = parse_args(
        [*BASE, "--watch", "--poll_interval_s", "2.5", "--window_s", "10", "--settle_s", "0"]
    )
    assert (args.poll_interval_s, args.window_s, args.settle_s) == (2.5, 10, 0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--poll_interval_s", "5"], "--poll_interval_s 5.0 only applies with --watch"),
        (["--window_shards", "2"], "--window_shards 2 only applies with --watch"),
        (["--watch", "--input_list", "list.txt"], "--watch labels loose files"),
        (["--watch", "--input_format", "webdataset"], "--watch labels loose files"),
        (["--watch", "--resume", "--retry_errors"], "--retry_errors needs a batch run"),
        (["--watch", "--poll_interval_s", "0"], "--poll_interval_s must be at least 0.1 seconds"),
        (["--watch", "--window_s", "nan"], "--window_s must be at least 1 seconds"),
        (["--watch", "--settle_s", "-1"], "--settle_s must be 0 seconds or more"),
        (["--watch", "--window_shards", "0"], "--window_shards must be at least 1"),
        (
            ["--watch_pubsub", "projects/p-123/subscriptions/s"],
            "--watch_pubsub projects/.* only applies with",
        ),
        (["--watch", "--watch_pubsub", "inbox"], "--watch_pubsub takes a subscription"),
        (
            ["--watch", "--watch_pubsub", "projects/my-project/subscriptions/inbox"],
            "every --input must be a gs://",
        ),
    ],
)
def test_what_watch_refuses(extra, message):
    with pytest.raises(ConfigError, match=message):
        parse_args([*BASE, *extra])


def test_a_watch_launch_needs_a_listable_pattern_not_a_file_yet(tmp_path, npz_path):
    from pipeline import run

    empty = tmp_path / "inbox"
    empty.mkdir()
    args, _ = parse_args(["--input", f"{empty}/*", "--output", str(tmp_path / "out"), "--weights", npz_path,
                          "--watch"])  # fmt: skip
    run.check_launch(args)  # matches nothing yet: fine
    args, _ = parse_args(["--input", str(empty), "--output", str(tmp_path / "out"), "--weights", npz_path,
                          "--watch"])  # fmt: skip
    with pytest.raises(run.storage.InputError, match="is a folder, not a pattern"):
        run.check_launch(args)


# ------------------------------------------------------------------- one poll


def polled(*args, **kwargs) -> tuple[list[str], int]:
    """The uris one poll lists, and how many ticks it gave."""
    uris, ticks = [], 0
    for out in watch.list_settled(Timestamp(0), *args, **kwargs):
        if isinstance(out, beam.pvalue.TaggedOutput):
            assert out.tag == watch.TICKS
            ticks += 1
        else:
            uris.append(out)
    return uris, ticks


def test_a_poll_lists_like_the_batch_job_and_leaves_files_still_settling(tmp_path):
    (tmp_path / "old.jpg").write_bytes(b"x")
    (tmp_path / "new.jpg").write_bytes(b"x")
    os.utime(tmp_path / "old.jpg", (time.time() - 60, time.time() - 60))
    os.mkfifo(tmp_path / "pipe.jpg")  # a special file is listed: reading it makes its errors row
    os.utime(tmp_path / "pipe.jpg", (time.time() - 60, time.time() - 60))
    odd = os.fsencode(str(tmp_path)) + b"/bad-\xff.jpg"  # a name that is not UTF-8
    with open(odd, "wb") as handle:
        handle.write(b"x")
    os.utime(odd, (time.time() - 60, time.time() - 60))
    pattern = (path_uri(str(tmp_path)) + "/*.jpg",)
    uris, ticks = polled(pattern, 5.0)
    assert ticks == 1
    names = sorted(uri.rsplit("/", 1)[1] for uri in uris)
    assert names == sorted(["old.jpg", "pipe.jpg", path_uri(os.fsdecode(odd)).rsplit("/", 1)[1]])
    uris, _ = polled(pattern, 0.0)  # --settle_s 0: everything at once
    assert len(uris) == 4


def test_a_poll_that_cannot_list_logs_and_carries_on(tmp_path, caplog):
    uris, ticks = polled(("s3-nonexistent-scheme-xyz://bucket/*",), 0.0)
    assert (uris, ticks) == ([], 1)
    assert "cannot be listed now" in caplog.text


def test_once_the_stop_marker_is_there_a_poll_lists_nothing_but_still_ticks(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    stop = str(tmp_path / "stop")
    pattern = (f"{tmp_path}/*.jpg",)
    assert polled(pattern, 0.0, stop) == ([f"{tmp_path}/a.jpg"], 1)
    watch.write_marker(stop, "1")
    assert polled(pattern, 0.0, stop) == ([], 1)


def test_a_notification_names_a_finalized_object_that_a_pattern_matches():
    from apache_beam.io.gcp.pubsub import PubsubMessage

    def message(event, obj, bucket="my-bucket"):
        return PubsubMessage(b"{}", {"eventType": event, "bucketId": bucket, "objectId": obj})

    patterns = ("gs://my-bucket/inbox/**.jpg", "gs://my-bucket/top/*.png")
    before = time.time()
    stamped = [
        out
        for found in (
            message("OBJECT_FINALIZE", "inbox/a/b/c.jpg"),  # ** crosses folders
            message("OBJECT_FINALIZE", "top/x.png"),
            message("OBJECT_FINALIZE", "top/deeper/x.png"),  # * does not
            message("OBJECT_FINALIZE", "inbox/notes.txt"),
            message("OBJECT_DELETE", "inbox/gone.jpg"),
            message("OBJECT_FINALIZE", "inbox/a.jpg", bucket="other-bucket"),
            message("OBJECT_METADATA_UPDATE", "inbox/a.jpg"),
        )
        for out in watch.notified(found, patterns)
    ]
    assert [out.value for out in stamped] == ["gs://my-bucket/inbox/a/b/c.jpg", "gs://my-bucket/top/x.png"]
    # Stamped with the time it arrives, never its publish time: a backlog from before the
    # launch must not fall in windows before the launch's first (their runs are taken).
    assert all(out.timestamp.micros >= before * 1_000_000 for out in stamped)


# ------------------------------------------------------------------- what is skipped


def test_skip_committed_skips_what_either_table_holds_and_what_they_commit_later(tmp_path):
    done, failed, new, later = "/in/done.jpg", "/in/failed.jpg", "/in/new.jpg", "/in/later.jpg"
    committer = _committer(tmp_path)
    first = [_window_files(tmp_path, PREDICTIONS, [done], "p0.parquet"),
             _window_files(tmp_path, ERRORS, [failed], "e0.parquet")]  # fmt: skip
    _commit(committer, [(0, first)])
    skip = watch.SkipCommitted(str(tmp_path), refresh_s=0)  # looks again before each input
    skip.setup()

    def passed(*uris):
        return [uri for uri in uris for _ in skip.process(uri)]

    assert passed(done, failed, new, later) == [new, later]
    # Committed by a window of this job (or of one before a restart from nothing): skipped too.
    _commit(committer, [(60, [_window_files(tmp_path, PREDICTIONS, [later], "p1.parquet")])])
    assert passed(done, failed, new, later) == [new]
    nothing = watch.SkipCommitted(str(tmp_path / "empty"), refresh_s=60)  # no tables yet
    nothing.setup()
    assert list(nothing.process(new)) == [new]


def _errors(path, uris: list[str]) -> None:
    schema = errors_schema(provenance=PROVENANCE)
    rows = [error_row(image_id(uri), uri, "decode", "corrupt", "x") for uri in uris]
    pq.write_table(schema.empty_table().from_pylist(rows, schema=schema), path)


def _predictions(path, uris: list[str]) -> None:
    schema = predictions_schema(embeddings=False, provenance=PROVENANCE)
    rows = [{"image_id": image_id(uri), "uri": uri, "width": 1, "height": 1, "labels": []} for uri in uris]
    pq.write_table(schema.empty_table().from_pylist(rows, schema=schema), path)


def test_first_seen_passes_each_uri_once():
    with TestPipeline() as p:
        found = (
            p
            | beam.Create([("a", True), ("b", True), ("a", True), ("a", True), ("b", True), ("c", True)])
            | beam.ParDo(watch.FirstSeen())
        )
        assert_that(found, equal_to(["a", "b", "c"]))


# ------------------------------------------------------------------- windows


def test_decode_keeps_each_output_in_its_inputs_window():
    # Decoding runs ahead (prefetch), so an output leaves while another input is in hand, or
    # in finish_bundle: it must still be in the window of the input it came from.
    data = (SAMPLES / "coffee.jpg").read_bytes()
    config = DecodeConfig(isolation="none", prefetch=3)
    stamps = [5, 65, 125, 6, 66, 7]  # three windows of 60 s, interleaved
    elements = [beam.window.TimestampedValue((f"k{i}", f"u{i}", data), t) for i, t in enumerate(stamps)]
    with TestPipeline() as p:
        decoded = (
            p
            | beam.Create(elements)
            | beam.WindowInto(window.FixedWindows(60))
            | beam.ParDo(DecodeImage(config))
            | beam.Map(lambda out, w=beam.DoFn.WindowParam: (out[0][0], int(w.start)))
        )
        assert_that(decoded, equal_to([(f"k{i}", (t // 60) * 60) for i, t in enumerate(stamps)]))


# ------------------------------------------------------------------- committing a window


def _window_files(output, table: str, uris: list[str], name: str):
    folder = output / table
    folder.mkdir(parents=True, exist_ok=True)
    (_predictions if table == PREDICTIONS else _errors)(folder / name, uris)
    return table, delta.describe(str(output), table, str(folder / name))


def _committer(output):
    schemas = {
        PREDICTIONS: predictions_schema(embeddings=False, provenance=PROVENANCE),
        ERRORS: errors_schema(provenance=PROVENANCE),
    }
    spec = delta.RunCommit(
        output=str(output), run=0, files={}, replace_errors=False, replace_predictions=False,
        schemas=schemas, provenance=PROVENANCE, token="tok",
    )  # fmt: skip
    return watch._CommitWindow(spec, s3={})


def _pane(index: int) -> PaneInfo:
    timing = PaneInfoTiming.ON_TIME if index == 0 else PaneInfoTiming.LATE
    return PaneInfo(index == 0, False, timing, index, index)


def _commit(fn, windows: list[tuple]):
    """One bundle of panes: (window start, files[, pane index])."""
    fn.start_bundle()
    for start, written, *index in windows:
        fn.process((None, written), win=window.IntervalWindow(start, start + 60), pane=_pane(*index or [0]))
    fn.finish_bundle()


def _pane_runs(output) -> dict[str, str]:
    """Each committed pane's identity -> its run, from the predictions table's history."""
    history = delta.snapshot(str(output)).tables[PREDICTIONS].history()
    return {entry[watch.PANE_KEY]: entry[delta.RUN_KEY] for entry in history if watch.PANE_KEY in entry}


def test_panes_commit_as_the_next_runs_oldest_window_first_and_a_retry_commits_nothing_twice(tmp_path):
    fn = _committer(tmp_path)
    first = [_window_files(tmp_path, PREDICTIONS, ["/in/a.jpg"], "w0-p.parquet"),
             _window_files(tmp_path, ERRORS, ["/in/bad.jpg"], "w0-e.parquet"), watch.TICK]  # fmt: skip
    second = [_window_files(tmp_path, PREDICTIONS, ["/in/b.jpg"], "w1-p.parquet"), watch.TICK]
    # One bundle with both windows, the later one first: committed oldest first.
    _commit(fn, [(60, second), (0, first)])
    _commit(fn, [(0, first)])  # a retried bundle
    found = delta.snapshot(str(tmp_path))
    assert found.run == 2
    assert found.rows(PREDICTIONS) == 2 and found.rows(ERRORS) == 1
    assert _pane_runs(tmp_path) == {"tok:0:0": "1", "tok:60000000:0": "2"}
    assert watch.committed_until(watch.markers(str(tmp_path), "tok")[1]) == 120.0


def test_a_late_pane_of_an_earlier_window_commits_as_the_next_run_once(tmp_path):
    fn = _committer(tmp_path)
    _commit(fn, [(60, [_window_files(tmp_path, PREDICTIONS, ["/in/b.jpg"], "w1.parquet")])])
    late = [_window_files(tmp_path, PREDICTIONS, ["/in/a.jpg"], "w0-late.parquet")]
    _commit(fn, [(0, late, 1)])
    _commit(fn, [(0, late, 1)])  # retried
    found = delta.snapshot(str(tmp_path))
    assert found.rows(PREDICTIONS) == 2
    assert _pane_runs(tmp_path) == {"tok:60000000:0": "1", "tok:0:1": "2"}
    # The late pane never moves the progress marker back.
    assert watch.committed_until(watch.markers(str(tmp_path), "tok")[1]) == 120.0


def test_a_retry_after_the_errors_step_completes_the_same_run(tmp_path):
    fn = _committer(tmp_path)
    _commit(fn, [(0, [_window_files(tmp_path, PREDICTIONS, ["/in/a.jpg"], "w0.parquet")])])
    written = [_window_files(tmp_path, PREDICTIONS, ["/in/b.jpg"], "w1-p.parquet"),
               _window_files(tmp_path, ERRORS, ["/in/bad.jpg"], "w1-e.parquet")]  # fmt: skip
    # The first attempt got as far as step 1 (errors, run 2), then died.
    files = {table: [found for name, found in written if name == table] for table in (PREDICTIONS, ERRORS)}
    step1 = dataclasses.replace(fn._spec, run=2, files=files, metadata={watch.PANE_KEY: "tok:60000000:0"})
    delta.commit_errors(step1, delta.storage_options(str(tmp_path)))
    _commit(fn, [(60, written)])  # the retry
    found = delta.snapshot(str(tmp_path))
    assert found.run == 2 and found.rows(PREDICTIONS) == 2 and found.rows(ERRORS) == 1
    assert _pane_runs(tmp_path) == {"tok:0:0": "1", "tok:60000000:0": "2"}


def test_a_window_of_ticks_only_commits_nothing_but_records_progress(tmp_path):
    fn = _committer(tmp_path)
    _commit(fn, [(0, [watch.TICK, watch.TICK])])
    assert delta.snapshot(str(tmp_path)).exists is False
    assert watch.committed_until(watch.markers(str(tmp_path), "tok")[1]) == 60.0
