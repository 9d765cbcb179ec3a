"""Runs the job for the tests: `python -m pipeline.run` as a user does, or in-process with fakes."""

from __future__ import annotations

import functools
import subprocess
import sys

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from pipeline.storage import read_bytes
from tests.conftest import REPO

# The job's reader with 10 ms backoff instead of 0.5 s, to keep retried reads fast.
FAST_RETRIES = functools.partial(read_bytes, backoff_s=0.01)


def run_job(*args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """The job with these arguments; with check, a non-zero exit fails the test with stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.run", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def run_here(capsys, *args, beam_flags=(), handler=None, reader=FAST_RETRIES, decode=None) -> str:
    """pipeline.run.run in this process with the fake model (fakes.FakeHandler); returns the summary line."""
    from pipeline import run
    from tests.pipeline.fakes import FakeHandler

    run.run(
        [*map(str, args)],
        test_pipeline=TestPipeline(options=PipelineOptions(list(beam_flags))),
        handler=handler or FakeHandler(max_batch_size=8),
        reader=reader,
        decode=decode,
    )
    return capsys.readouterr().out.strip().splitlines()[-1]
