"""pipeline.job.decode in a job: a decoder crash or hang in the sandbox is one errors row, the job goes on."""

from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.job.decode import DecodeConfig
from pipeline.job.label import LabelImages
from pipeline.job.read.files import ReadImages
from tests.conftest import SAMPLES
from tests.pipeline.fakes import FakeHandler
from tests.pipeline.faults import CRASH, HANG, crashing_decode


@pytest.mark.slow
def test_decoder_crash_and_hang_are_contained_in_a_job(tmp_path):
    # A real segfault (and a decode that never returns) inside the decoder: each costs
    # one errors row; the worker, and the images after them, carry on.
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    files = {"a.jpg": photo, "crash.jpg": CRASH + photo, "hang.jpg": HANG, "b.jpg": photo}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    config = DecodeConfig(decode=crashing_decode, timeout_s=2)
    with TestPipeline() as p:
        read = p | beam.Create(sorted(str(tmp_path / n) for n in files)) | ReadImages()
        out = read["images"] | LabelImages(FakeHandler(max_batch_size=1), config, top_k=5, embeddings=False)
        assert_that(
            out["predictions"] | beam.Map(lambda r: os.path.basename(r["uri"])),
            equal_to(["a.jpg", "b.jpg"]),
            label="labelled",
        )
        assert_that(
            out["errors"] | beam.Map(lambda r: (os.path.basename(r["uri"]), r["stage"], r["message"])),
            equal_to(
                [
                    (
                        "crash.jpg",
                        "decode",
                        "crashed: the decoder process died while decoding this input "
                        "(killed by signal SIGSEGV)",
                    ),
                    (
                        "hang.jpg",
                        "decode",
                        "timeout: decoding took longer than 2 s; the decoder process was killed",
                    ),
                ]
            ),
            label="contained",
        )
