"""vgg.dali on the CPU: DALI's pixels against decode_image's, and the JPEGs it leaves to vgg.preprocess."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLES
from tests.images import encode, exif_tagged, quadrants
from vgg import hardware
from vgg.dali import DaliDecoder, DaliUnavailable, import_dali, oriented, plan
from vgg.preprocess import _TRANSPOSE, RESIZE_MODES, ImageError, decode_image

PHOTOS = ("astronaut.jpg", "china.jpg", "coffee.jpg", "retina.jpg", "rocket.jpg")
# DALI against decode_image(draft=False), the same full-resolution decode: measured on the five
# bundled JPEGs and china.jpg under every EXIF orientation (DALI 2.4 on the CPU), the mean
# difference is 0.06-0.15 levels of 255 and 99% of values are within 1 level, in both modes.
# The worst value: 9 levels for "squash" (the antialiasing filters' edges differ on sharp
# detail), 1 for "center_crop". The bounds leave room for another libjpeg-turbo build.
MEAN_BOUND, P99_BOUND = 0.25, 2
MAX_BOUND = {"squash": 16, "center_crop": 4}


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), float(np.percentile(d, 99)), int(d.max())


@pytest.fixture(scope="module")
def decoders():
    """One DALI pipeline on the CPU per resize mode, for the module."""
    return {mode: DaliDecoder(device="cpu", resize=mode, batch_size=8) for mode in RESIZE_MODES}


@pytest.fixture(scope="module")
def turned():
    """china.jpg (640x427, not square) re-encoded under each EXIF orientation 1..8: name -> bytes."""
    with Image.open(SAMPLES / "china.jpg") as img:
        return {f"china-exif{o}": exif_tagged(img, "JPEG", o, quality=90) for o in range(1, 9)}


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_dali_on_cpu_matches_decode_image_within_bounds(mode, decoders, turned):
    inputs = {name: (SAMPLES / name).read_bytes() for name in PHOTOS} | turned
    decoded = decoders[mode](list(inputs.values()))
    for (name, data), got in zip(inputs.items(), decoded):
        assert got is not None, name
        want = decode_image(data, resize=mode, draft=False)
        assert (got.width, got.height) == (want.width, want.height), name
        assert got.pixels.shape == (224, 224, 3) and got.pixels.dtype == np.uint8
        assert got.pixels.flags.c_contiguous and not got.pixels.flags.writeable
        mean, p99, worst = difference(got.pixels, want.pixels)
        assert mean <= MEAN_BOUND and p99 <= P99_BOUND and worst <= MAX_BOUND[mode], (name, mean, p99, worst)


def test_exif_orientation_turns_the_output_as_decode_image_does(decoders):
    # Quadrants (red, green / blue, white) are asymmetric under every turn and flip: each
    # quadrant's centre pixel must be the colour decode_image puts there.
    for orientation in range(1, 9):
        data = exif_tagged(quadrants(64, 48), "JPEG", orientation, quality=95)
        for mode in RESIZE_MODES:
            (got,) = decoders[mode]([data])
            want = decode_image(data, resize=mode, draft=False)
            assert (got.width, got.height) == (want.width, want.height)
            for y, x in ((56, 56), (56, 168), (168, 56), (168, 168)):
                np.testing.assert_allclose(
                    got.pixels[y, x], want.pixels[y, x], atol=8, err_msg=str(orientation)
                )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_oriented_is_pillows_transpose(orientation):
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    method = _TRANSPOSE.get(orientation)
    img = Image.fromarray(pixels)
    want = np.asarray(img if method is None else img.transpose(method))
    np.testing.assert_array_equal(oriented(pixels, orientation), want)


def test_what_dali_takes_and_what_it_leaves_to_vgg_preprocess():
    with Image.open(SAMPLES / "china.jpg") as img:
        rgb = img.convert("RGB")
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    taken = {
        "baseline": photo,
        "progressive": encode(rgb, "JPEG", progressive=True),
        "greyscale": encode(rgb.convert("L"), "JPEG"),
    }
    left = {
        "png": (SAMPLES / "chelsea.png").read_bytes(),
        "cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "mpo": encode(rgb, "MPO", save_all=True, append_images=[rgb.rotate(180)]),
        "truncated": photo[: len(photo) // 2],
        "not an image": b"<html>not a photo</html>",
        "empty": b"",
        "corrupt": damaged(photo),
    }
    for name, data in taken.items():
        assert plan(data) is not None, name
    for name, data in left.items():
        assert plan(data) is None, name
    # Over max_pixels (600x400 = 240,000 pixels): vgg.preprocess refuses it as too_large.
    assert plan(photo, max_pixels=240_000) is not None
    assert plan(photo, max_pixels=239_999) is None


def damaged(photo: bytes) -> bytes:
    """photo with a marker that has no place in compressed data (0xFF 0x3F) in its first scan."""
    scan = photo.index(b"\xff\xda") + 200
    return photo[:scan] + b"\xff\x3f" + photo[scan + 2 :]


def test_damaged_compressed_data_is_left_to_vgg_preprocess(decoders):
    # Libjpeg behind Pillow stops at the stray marker ("corrupt"); DALI's decoders carry on
    # and return an image, so plan() must leave such a file to vgg.preprocess.
    data = damaged((SAMPLES / "coffee.jpg").read_bytes())
    with pytest.raises(ImageError, match="^corrupt: "):
        decode_image(data)
    assert plan(data) is None
    dali_alone = decoders["squash"]._run([data], [plan((SAMPLES / "coffee.jpg").read_bytes())])
    assert dali_alone.shape == (1, 224, 224, 3)


def without_quantization_table(photo: bytes) -> bytes:
    """photo without its (first) quantization table segment: the header still reads as a JPEG's."""
    dqt = photo.index(b"\xff\xdb")
    return photo[:dqt] + photo[dqt + 2 + int.from_bytes(photo[dqt + 2 : dqt + 4], "big") :]


def test_an_image_dali_fails_on_is_none_and_the_rest_of_its_batch_decodes(decoders):
    # The header passes plan()'s checks, but no decoder can go on without the table: DALI
    # fails on it, which fails its whole batch, and each image is then decoded alone.
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    broken = without_quantization_table(photo)
    with pytest.raises(ImageError, match="^corrupt: "):
        decode_image(broken)  # what the CPU path will say of it
    assert plan(broken) is not None
    decoded = decoders["squash"]([photo, broken, photo])
    assert [d is not None for d in decoded] == [True, False, True]
    np.testing.assert_array_equal(decoded[0].pixels, decoded[2].pixels)
    assert decoders["squash"]([photo])[0] is not None  # the rebuilt pipeline goes on


def test_more_images_than_the_batch_are_split(decoders):
    photos = [(SAMPLES / name).read_bytes() for name in PHOTOS] * 2  # 10 > batch_size 8
    decoded = decoders["center_crop"](photos)
    assert all(d is not None for d in decoded)
    for first, second in zip(decoded[:5], decoded[5:]):
        np.testing.assert_array_equal(first.pixels, second.pixels)


def test_without_dali_installed_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `import nvidia.dali` fail
    with pytest.raises(
        DaliUnavailable, match=r"install the 'gpu-decode' extra: pip install 'vgg16-beam\[gpu-decode\]'"
    ):
        import_dali()


def test_arguments_are_checked():
    with pytest.raises(ValueError, match=r"device must be one of \('gpu', 'cpu'\). Received: device='tpu'"):
        DaliDecoder(device="tpu")
    with pytest.raises(ValueError, match=r"resize must be one of"):
        DaliDecoder(device="cpu", resize="stretch")
    with pytest.raises(ValueError, match=r"batch_size and threads must be at least 1"):
        DaliDecoder(device="cpu", batch_size=0)


def gpus() -> list:
    return hardware.visible_gpus(hardware.parse_gpus(hardware.query_gpus()), None)


@pytest.mark.skipif(bool(gpus()), reason="this machine has a GPU (the GPU test below runs instead)")
def test_device_gpu_without_a_gpu_is_dali_unavailable():
    with pytest.raises(DaliUnavailable, match="^DALI cannot use a GPU here: "):
        DaliDecoder(device="gpu")


@pytest.mark.skipif(not gpus(), reason="needs an NVIDIA GPU")
def test_on_a_gpu_nvjpeg_matches_decode_image_within_bounds(turned):
    # nvJPEG's IDCT and colour conversion are not libjpeg-turbo's: looser than on the CPU.
    inputs = [(SAMPLES / name).read_bytes() for name in PHOTOS] + list(turned.values())
    for mode in RESIZE_MODES:
        decoded = DaliDecoder(device="gpu", resize=mode, batch_size=8)(inputs)
        for data, got in zip(inputs, decoded):
            mean, p99, worst = difference(got.pixels, decode_image(data, resize=mode, draft=False).pixels)
            assert mean <= 1.0 and p99 <= 4 and worst <= 2 * MAX_BOUND[mode], (mode, mean, p99, worst)


def test_any_bytes_like_input_is_taken_and_anything_else_left(decoders):
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    decoded = decoders["squash"]([memoryview(photo), bytearray(photo), "coffee.jpg", None])
    assert [d is not None for d in decoded] == [True, True, False, False]
    np.testing.assert_array_equal(decoded[0].pixels, decoded[1].pixels)
