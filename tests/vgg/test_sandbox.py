"""pipeline.sandbox: the decoder in a child process gives the same results, and contains crashes and hangs."""

from __future__ import annotations

import os
import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.sandbox import DecodeFailed, DecoderCrashed, IsolatedDecoder
from pipeline.transforms import DecodeConfig, LabelImages, ReadImages
from tests.conftest import SAMPLES
from tests.pipeline.fakes import FakeHandler
from tests.pipeline.faults import CRASH, HANG, crashing_decode
from vgg.preprocess import ImageError, decode_image


def _raise_bug(data: bytes, **kwargs):
    """A decoder with a bug: what DecodeFailed reports."""
    raise KeyError("a bug, not a bad image")


@pytest.fixture
def decoder():
    isolated = IsolatedDecoder(crashing_decode, timeout_s=2)
    yield isolated
    isolated.close()


def test_same_pixels_as_decoding_in_process(decoder):
    data = (SAMPLES / "coffee.jpg").read_bytes()
    for resize in ("squash", "center_crop"):
        here, there = decode_image(data, resize=resize), decoder(data, resize=resize)
        assert (there.width, there.height) == (here.width, here.height) == (600, 400)
        np.testing.assert_array_equal(there.pixels, here.pixels)


def test_bad_images_keep_their_error_type(decoder):
    with pytest.raises(ImageError) as info:
        decoder(b"<html>not an image</html>")
    assert info.value.error_type == "not_an_image"


def test_a_crash_costs_one_call_and_the_next_starts_a_new_child(decoder):
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    with pytest.raises(DecoderCrashed) as info:
        decoder(CRASH + photo)
    assert info.value.error_type == "crashed"
    assert str(info.value) == "the decoder process died while decoding this input (killed by signal SIGSEGV)"
    assert decoder(photo).width == 600  # a fresh child took over
    with pytest.raises(DecoderCrashed) as info:
        decoder(HANG)
    assert info.value.error_type == "timeout"
    assert decoder(photo).width == 600
    copy = pickle.loads(pickle.dumps(info.value))  # crosses process boundaries intact
    assert (copy.error_type, str(copy)) == ("timeout", str(info.value))


def test_an_unexpected_exception_is_reported_not_raised_as_is():
    isolated = IsolatedDecoder(_raise_bug)
    try:
        with pytest.raises(DecodeFailed, match="KeyError: 'a bug, not a bad image'"):
            isolated(b"anything")
    finally:
        isolated.close()


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
