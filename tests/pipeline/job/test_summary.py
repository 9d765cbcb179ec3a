"""pipeline.job.summary: the counters added up into the summary line, and the error budget."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from apache_beam.metrics.execution import MetricKey, MetricResult
from apache_beam.metrics.metricbase import MetricName
from apache_beam.testing.test_pipeline import TestPipeline

import pipeline.run as job
from pipeline.job.summary import JobFailed, counters, summarize
from tests.conftest import SAMPLES
from tests.pipeline.fakes import FakeHandler


class FakeResult:
    """A PipelineResult whose metrics() answers like Beam's, per step and name."""

    def __init__(self, values: dict[tuple[str, str], int], *, committed: bool = True):
        self._results = [
            MetricResult(MetricKey(step, MetricName("vgg16", name)), value if committed else None, value)
            for (step, name), value in values.items()
        ]

    def metrics(self):
        return SimpleNamespace(query=lambda _filter: {"counters": self._results})


def test_counters_add_up_over_steps_and_fall_back_to_attempted():
    values = {("Read", "failed_read"): 2, ("Read2", "failed_read"): 3, ("Format", "images_labelled"): 7}
    assert counters(FakeResult(values)) == {"failed_read": 5, "images_labelled": 7}
    # Runners without committed metrics (some portable ones) report attempted values only.
    assert counters(FakeResult(values, committed=False)) == {"failed_read": 5, "images_labelled": 7}


def test_summary_line():
    values = {
        ("F", "images_labelled"): 90,
        ("R", "failed_read"): 4,
        ("D", "failed_decode"): 6,
        ("R", "read_retries"): 3,
        ("P", "inputs_skipped"): 20,
    }
    line = summarize(FakeResult(values), 10.0, 1.0)
    assert line == (
        "summary: 100 inputs, 90 labelled, 10 failed (read 4, decode 6, inference 0), "
        "20 skipped as already in --output, 0 earlier errors retried; wall 10.0 s, 9.00 images/s; "
        "3 read retries, 0 decoder crashes/timeouts contained"
    )


def test_summary_line_counts_the_shards_read():
    # With a shard --input_format the inputs are the shards' members; the line says from how many shards.
    values = {("F", "images_labelled"): 7, ("R", "failed_read"): 1, ("R", "shards_read"): 3}
    assert summarize(FakeResult(values), 2.0, 1.0) == (
        "summary: 8 inputs from 3 shard(s), 7 labelled, 1 failed (read 1, decode 0, inference 0); "
        "wall 2.0 s, 3.50 images/s"
    )


def test_error_budget():
    values = {("F", "images_labelled"): 90, ("D", "failed_decode"): 10}
    summarize(FakeResult(values), 1.0, 0.1)  # 10% failed is not more than 0.1
    with pytest.raises(
        JobFailed, match=r"10 of 100 inputs failed \(10.0%\), more than --max_error_fraction=0.05"
    ):
        summarize(FakeResult(values), 1.0, 0.05)


def test_error_budget_fails_the_job_after_writing(tmp_path, npz_path, capsys, monkeypatch, read_rows):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes())
    for name in ("x.jpg", "y.jpg", "z.jpg"):
        (folder / name).write_bytes(b"not a photo")
    out = tmp_path / "out"
    real_run = job.run

    def fake_run(argv, handler=None):  # main's own handler: none, so the real model; here the fake
        return real_run(argv, test_pipeline=TestPipeline(), handler=FakeHandler())

    monkeypatch.setattr(job, "run", fake_run)
    argv = ["--input", f"{folder}/*", "--output", str(out), "--weights", npz_path]
    assert job.main([*argv, "--max_error_fraction", "0.5"]) == 1
    captured = capsys.readouterr()
    assert (
        "error: 3 of 4 inputs failed (75.0%), more than --max_error_fraction=0.5. Every row is written"
        in captured.err
    )
    # Everything was written before the job failed.
    assert len(read_rows(out, "predictions")[0]) == 1 and len(read_rows(out, "errors")[0]) == 3
    assert job.main([*argv, "--max_error_fraction", "0.75"]) == 0  # 3/4 is not more than 0.75
    # The default, 1.0, never fails: bad files are expected, each is an errors row.
    assert job.main(argv) == 0
