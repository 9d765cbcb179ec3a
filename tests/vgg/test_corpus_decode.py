"""Every kind of the generated bad-input corpus through vgg.preprocess.decode_image: its expected outcome."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from vgg.preprocess import ERROR_TYPES, ImageError, decode_image


def test_corpus_has_every_kind_the_issue_lists(corpus):
    _, expected = corpus
    assert len(expected) >= 20
    outcomes = {e.outcome for e in expected.values()}
    # Every error_type the decoder has is produced by at least one generated file.
    assert {f"decode/{t}" for t in ERROR_TYPES} <= outcomes
    assert {"read/permission_denied", "read/not_found", "prediction"} <= outcomes


def test_every_kind_decodes_to_its_expected_outcome(corpus):
    folder, expected = corpus
    for name, want in sorted(expected.items()):
        data = (folder / name).read_bytes()
        if want.stage == "read":
            # Read faults are injected by the pipeline tests; the bytes are a good photo.
            assert decode_image(data).pixels.shape == (224, 224, 3), name
            continue
        if want.stage is None:
            image = decode_image(data)
            assert (image.width, image.height) == want.size, name
            assert image.pixels.shape == (224, 224, 3) and image.pixels.dtype == np.uint8, name
            if want.top_left is not None:
                # JPEG and bilinear resizing move flat colours by a level or two at most;
                # 8 levels still tells red from white from blue.
                got = image.pixels[0, 0].astype(int)
                assert np.abs(got - want.top_left).max() <= 8, (name, got, want.top_left)
        else:
            # Pillow only warns between 1x and 2x its pixel limit; the decoder refuses.
            warns = name == "bomb_warning_zone.png"
            with pytest.warns(Image.DecompressionBombWarning) if warns else contextlib.nullcontext():
                with pytest.raises(ImageError) as info:
                    decode_image(data)
            assert info.value.error_type == want.error_type, (name, str(info.value))
            assert str(info.value).startswith(f"{want.error_type}: "), name


def test_bomb_is_refused_before_any_pixel_is_decoded(corpus):
    folder, _ = corpus
    # The file is 45 bytes of header claiming 100000 x 100000 pixels: refusing it must
    # not allocate anything like 30 GB, so the refusal comes from the size alone.
    data = (folder / "bomb.png").read_bytes()
    assert len(data) == 45
    with pytest.raises(ImageError, match="too_large"):
        decode_image(data)


MEMORY_PROBE = """
import sys
from vgg.preprocess import decode_image

def peak_mib():
    # VmHWM: this process's peak resident memory. Unlike ru_maxrss it is not inherited
    # from the (large) pytest process that forked us.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

data = open(sys.argv[1], "rb").read()
decode_image(open(sys.argv[2], "rb").read())  # warm up: lazy imports, first allocations
base = peak_mib()
image = decode_image(data)
draft = peak_mib()
decode_image(data, draft=False)
full = peak_mib()
print(image.width, image.height, round(draft - base), round(full - base))
"""


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_large_photo_decodes_in_bounded_memory(corpus):
    folder, _ = corpus
    # A fresh process, so that its peak resident size measures this decode only.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_PROBE,
            str(folder / "large_8000x6000.jpg"),
            str(folder / "photo.jpg"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    width, height, draft_mib, full_mib = map(int, done.stdout.split())
    assert (width, height) == (8000, 6000)
    # Full resolution is 8000 * 6000 * 3 bytes = 137 MiB of RGB, which the draft=False
    # decode must show (proving the probe measures); draft decodes at 1/8 scale
    # (1000 x 750 x 3 = 2.1 MiB), so its peak stays far below.
    assert full_mib >= 130, done.stdout
    assert draft_mib <= 32, done.stdout
