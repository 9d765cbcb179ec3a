"""vgg.sandbox: the decoder in a child process; a crash or a hang costs one call, never the caller."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from tests.conftest import SAMPLES
from tests.pipeline.faults import CRASH, HANG, crashing_decode
from vgg.preprocess import ImageError, decode_image
from vgg.sandbox import DecodeFailed, DecoderCrashed, IsolatedDecoder


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
