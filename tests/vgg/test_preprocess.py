"""Tests for vgg.preprocess: modes, orientation, resizing, draft and bad inputs."""

import dataclasses
import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests import images
from tests.conftest import SAMPLES
from tests.images import BLUE, GREEN, RED, WHITE, encode, exif_tagged, png_header_only
from tests.modules import imported_modules
from vgg import preprocess
from vgg.preprocess import (
    ALLOWED_FORMATS,
    MAX_PIXELS,
    OPEN_FORMATS,
    RESIZE_MODES,
    DecodedImage,
    ImageError,
    decode_image,
    load_image,
    open_image,
    to_rgb,
    upright,
)

# (width, height) of each bundled photo, as listed in samples/README.md.
SAMPLE_SIZES = {
    "astronaut.jpg": (512, 512),
    "chelsea.png": (451, 300),
    "china.jpg": (640, 427),
    "coffee.jpg": (600, 400),
    "retina.jpg": (1411, 1411),
    "rocket.jpg": (640, 427),
}


def uniform(decoded: DecodedImage) -> tuple[int, ...]:
    """The single colour of an output that must be one flat colour."""
    colours = np.unique(decoded.pixels.reshape(-1, 3), axis=0)
    assert len(colours) == 1, f"expected one colour, got {colours[:5]}"
    return tuple(int(c) for c in colours[0])


@pytest.fixture(scope="session")
def sample_bytes() -> dict[str, bytes]:
    return {name: (SAMPLES / name).read_bytes() for name in SAMPLE_SIZES}


@pytest.fixture(scope="session")
def quadrants() -> Image.Image:
    """64x48 RGB, top-left red, top-right green, bottom-left blue, rest white."""
    return images.quadrants(64, 48)


# --- Constants and the public surface --------------------------------------


def test_pixel_limit_is_pillows_default():
    # MAX_PIXELS is a copy of Pillow's default Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3),
    # read here from a fresh interpreter, where nothing has changed that global, so that a Pillow
    # with another default shows.
    done = subprocess.run(
        [sys.executable, "-c", "from PIL import Image; print(Image.MAX_IMAGE_PIXELS)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert MAX_PIXELS == int(done.stdout)


def test_module_imports_only_pillow_numpy_and_stdlib():
    # Beam workers and the launcher both import this; it must stay light. Its imports from
    # this project, vgg.architecture and vgg.errors, import nothing (their own tests).
    assert imported_modules(preprocess) == {
        "dataclasses",
        "io",
        "os",
        "struct",
        "numpy",
        "PIL",
        "vgg.architecture",
        "vgg.errors",
    }


def _blocks_max_in_fresh_interpreter(setting: str | None) -> int:
    """Pillow's kept blocks after importing the decoder, with PILLOW_BLOCKS_MAX set to setting (or unset)."""
    env = {key: value for key, value in os.environ.items() if key != "PILLOW_BLOCKS_MAX"}
    if setting is not None:
        env["PILLOW_BLOCKS_MAX"] = setting
    code = "import vgg.preprocess; from PIL import Image; print(Image.core.get_blocks_max())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(done.stdout)


def test_importing_the_decoder_lets_pillow_keep_a_decodes_image_blocks():
    # One decode makes three images (decoded, then resized once per axis).
    assert _blocks_max_in_fresh_interpreter(None) == preprocess.KEPT_IMAGE_BLOCKS >= 3


@pytest.mark.parametrize("setting", ["0", "16"])
def test_pillow_blocks_max_in_the_environment_is_left_as_it_is(setting):
    assert _blocks_max_in_fresh_interpreter(setting) == int(setting)


def test_kept_blocks_change_no_pixel(sample_bytes):
    # A reused block holds the previous image's pixels: every output must be what a decode
    # into fresh memory gives, whichever image came before it.
    order = sorted(sample_bytes) + sorted(sample_bytes, reverse=True)

    def decode_all(blocks_max: int) -> list[np.ndarray]:
        Image.core.set_blocks_max(blocks_max)
        return [decode_image(sample_bytes[name]).pixels for name in order]

    before = Image.core.get_blocks_max()
    try:
        reused = Image.core.get_stats()["reused_blocks"]
        kept = decode_all(preprocess.KEPT_IMAGE_BLOCKS)
        assert Image.core.get_stats()["reused_blocks"] > reused
        fresh = decode_all(0)
    finally:
        Image.core.set_blocks_max(before)
    for got, expected in zip(kept, fresh):
        np.testing.assert_array_equal(got, expected)


def test_image_error_is_value_error_with_type():
    err = ImageError("corrupt", "bad bytes")
    assert isinstance(err, ValueError)
    assert err.error_type == "corrupt"
    assert str(err) == "corrupt: bad bytes"
    with pytest.raises(ValueError, match=r"Received: error_type='nope'"):
        ImageError("nope", "x")


def test_output_contract(sample_bytes):
    out = decode_image(sample_bytes["chelsea.png"])
    assert out.pixels.shape == (224, 224, 3)
    assert out.pixels.dtype == np.uint8
    assert out.pixels.flags["C_CONTIGUOUS"]
    assert (out.width, out.height) == (451, 300)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.width = 1


@pytest.mark.parametrize("name", sorted(SAMPLE_SIZES))
@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_every_sample_decodes(name, resize):
    out = load_image(SAMPLES / name, resize=resize)
    assert out.pixels.shape == (224, 224, 3)
    assert (out.width, out.height) == SAMPLE_SIZES[name]


# --- Argument validation ----------------------------------------------------


def test_bad_resize_is_rejected_before_data_is_read():
    # b"" would be an "empty" ImageError; the argument check comes first.
    with pytest.raises(ValueError) as info:
        decode_image(b"", resize="x")
    assert not isinstance(info.value, ImageError)
    assert str(info.value) == "resize must be one of ('squash', 'center_crop'). Received: resize='x'"


def test_load_image_checks_arguments_before_opening(tmp_path):
    with pytest.raises(ValueError, match="Received: resize='crop'"):
        load_image(tmp_path / "missing.jpg", resize="crop")


@pytest.mark.parametrize("max_pixels", [0, -1, 2.5, True])
def test_bad_max_pixels(max_pixels):
    with pytest.raises(ValueError, match="max_pixels must be a positive int"):
        decode_image(b"x", max_pixels=max_pixels)


@pytest.mark.parametrize("background", [(255, 255), (0, 0, 256), [0, 0, 0], "white"])
def test_bad_background(background):
    with pytest.raises(ValueError, match="background must be a tuple of 3 ints"):
        decode_image(b"x", background=background)


def test_data_must_be_bytes():
    with pytest.raises(TypeError, match="Received: data of type str"):
        decode_image("photo.jpg")


# --- Modes ------------------------------------------------------------------


def test_l_grey():
    data = encode(Image.new("L", (8, 8), 77), "PNG")
    assert uniform(decode_image(data)) == (77, 77, 77)


@pytest.mark.parametrize("bit, expected", [(0, (0, 0, 0)), (1, WHITE)])
def test_mode_1(bit, expected):
    # A bilevel pixel is black or white; Pillow maps 1 to 255.
    assert uniform(decode_image(encode(Image.new("1", (8, 8), bit), "PNG"))) == expected


@pytest.mark.parametrize(
    "alpha, expected",
    [
        (0, WHITE),  # fully transparent: only the white background shows
        (255, (0, 0, 0)),  # opaque black stays black
        (128, (127, 127, 127)),  # 0 * 128/255 + 255 * 127/255 = 127
    ],
)
def test_la_over_white(alpha, expected):
    data = encode(Image.new("LA", (8, 8), (0, alpha)), "PNG")
    assert uniform(decode_image(data)) == expected


@pytest.mark.parametrize(
    "alpha, expected",
    [
        (0, WHITE),  # transparent red over white is white
        (255, RED),
        # R: (255 * 128 + 255 * 127) / 255 = 255; G, B: 255 * 127 / 255 = 127.
        (128, (255, 127, 127)),
    ],
)
def test_rgba_over_white(alpha, expected):
    data = encode(Image.new("RGBA", (8, 8), (255, 0, 0, alpha)), "PNG")
    assert uniform(decode_image(data)) == expected


def test_rgba_over_custom_background():
    data = encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG")
    assert uniform(decode_image(data, background=(10, 20, 30))) == (10, 20, 30)


def test_p_with_transparent_index():
    # 448 wide: left half palette index 0 (red, marked transparent), right
    # half index 1 (green). Squashing 448 -> 224 halves the width with a
    # bilinear filter 2 source pixels wide either side of each output
    # pixel's centre 2j + 1, so output columns 0..110 see only the left half
    # and 113..223 only the right half.
    img = Image.new("P", (448, 448), 0)
    img.putpalette([*RED, *GREEN])
    img.paste(1, (224, 0, 448, 448))
    out = decode_image(encode(img, "PNG", transparency=0)).pixels
    assert (out[:, :111] == WHITE).all()
    assert (out[:, 113:] == GREEN).all()


@pytest.mark.parametrize(
    "img, key",
    [(Image.new("L", (8, 8), 50), 50), (Image.new("RGB", (8, 8), (1, 2, 3)), (1, 2, 3))],
    ids=["L", "RGB"],
)
def test_transparency_key_over_white(img, key):
    # A PNG tRNS colour key makes every pixel of that value transparent.
    assert uniform(decode_image(encode(img, "PNG", transparency=key))) == WHITE


def test_p_without_transparency():
    img = Image.new("P", (8, 8), 1)
    img.putpalette([*RED, *BLUE])
    assert uniform(decode_image(encode(img, "PNG"))) == BLUE


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk(fmt):
    # Pillow's CMYK -> RGB is (255 - c) * (255 - k) / 255 per channel:
    # C=100, K=100 -> 155 * 155 / 255 = 94.2 -> 94; M=50 -> 205 * 155 / 255 =
    # 124.6 -> 125; Y=0 -> 155. Pillow writes CMYK JPEGs Adobe-inverted and
    # undoes that on reading; a flat JPEG keeps only its DC coefficients, so
    # it comes back to within rounding (allow 2 levels).
    data = encode(Image.new("CMYK", (32, 32), (100, 50, 0, 100)), fmt)
    got = np.array(uniform(decode_image(data)))
    tolerance = 0 if fmt == "TIFF" else 2
    assert np.abs(got - (94, 125, 155)).max() <= tolerance


@pytest.mark.parametrize(
    "value, expected",
    [
        (65535, 255),  # 65535 / 257 = 255
        (32896, 128),  # 32896 / 257 = 128 exactly
        (1000, 4),  # 3.89 rounds to 4; a clip at 255 would give 255
        (128, 0),  # 0.498 rounds down
        (129, 1),  # 0.502 rounds up
        (0, 0),
    ],
)
def test_sixteen_bit_png_is_scaled_not_clipped(value, expected):
    img = Image.fromarray(np.full((8, 8), value, dtype=np.uint16))
    assert img.mode == "I;16"
    assert uniform(decode_image(encode(img, "PNG"))) == (expected,) * 3


def test_sixteen_bit_big_endian_tiff():
    img = Image.fromarray(np.full((8, 8), 32896, dtype=">u2"))
    assert img.mode == "I;16B"
    assert uniform(decode_image(encode(img, "TIFF"))) == (128, 128, 128)


@pytest.mark.parametrize(
    "mode, values, expected",
    [
        # "I" is taken as 16-bit: clipped to 0..65535, then / 257 rounded.
        ("I", [-5, 32896, 70000], [0, 128, 255]),
        ("I;16L", [65535, 257, 0], [255, 1, 0]),
        # "F" is rounded and clipped to 0..255; NaN becomes 0.
        ("F", [-5.0, 127.6, 300.0, np.nan], [0, 128, 255, 0]),
    ],
)
def test_to_rgb_wide_modes(mode, values, expected):
    dtype = {"I": np.int32, "I;16L": np.uint16, "F": np.float32}[mode]
    row = np.array([values], dtype=dtype)
    img = Image.frombytes(mode, (len(values), 1), row.tobytes())
    got = np.asarray(to_rgb(img))
    assert got.tolist() == [[[v, v, v] for v in expected]]


@pytest.mark.parametrize(
    "mode, colour, expected",
    [
        ("YCbCr", (255, 128, 128), WHITE),  # full luma, neutral chroma
        ("HSV", (0, 255, 255), RED),  # hue 0 at full saturation and value
        # Premultiplied: the stored 100 already is L * a, so over white
        # each channel is 100 + 255 * (255 - 128) / 255 = 227.
        ("La", (100, 128), (227, 227, 227)),
        ("RGBa", (100, 0, 0, 128), (227, 127, 127)),
        ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
    ],
)
def test_to_rgb_other_modes(mode, colour, expected):
    assert to_rgb(Image.new(mode, (2, 2), colour)).getpixel((0, 0)) == expected


def test_to_rgb_lab_white():
    # L=100%, a=b=0 is white; Pillow's LAB -> sRGB lands within 1 level.
    got = to_rgb(Image.new("LAB", (2, 2), (255, 128, 128))).getpixel((0, 0))
    assert max(abs(c - 255) for c in got) <= 1


def test_to_rgb_returns_rgb_unchanged():
    img = Image.new("RGB", (2, 2), RED)
    assert to_rgb(img) is img


# --- EXIF orientation -------------------------------------------------------


ORIENTATION_TO_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_270,  # displayed rotated 90 degrees clockwise
    8: Image.Transpose.ROTATE_90,  # displayed rotated 90 degrees anticlockwise
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATION_TO_TRANSPOSE))
@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_exif_rotated_png_equals_physically_rotated(quadrants, orientation, resize):
    # PNG is lossless, so both files hold exactly the same pixels and the
    # outputs must match exactly.
    tagged = decode_image(exif_tagged(quadrants, "PNG", orientation), resize=resize)
    rotated = quadrants.transpose(ORIENTATION_TO_TRANSPOSE[orientation])
    expected = decode_image(encode(rotated, "PNG"), resize=resize)
    np.testing.assert_array_equal(tagged.pixels, expected.pixels)
    assert (tagged.width, tagged.height) == rotated.size
    assert (tagged.width, tagged.height) == ((48, 64) if orientation != 3 else (64, 48))


def test_orientation_6_puts_top_left_at_top_right(quadrants):
    # Orientation 6 means "rotate 90 degrees clockwise to display": the
    # stored top-left (red) quadrant shows at the top right, the stored
    # top-right (green) at the bottom right. Sampled well inside quadrants.
    out = decode_image(exif_tagged(quadrants, "PNG", 6)).pixels
    assert tuple(out[10, 214]) == RED
    assert tuple(out[214, 214]) == GREEN
    assert tuple(out[10, 10]) == BLUE


def test_exif_rotated_jpeg_equals_physically_rotated(quadrants):
    # Same pixels, same encoder settings: the EXIF block is the only
    # difference between the two JPEGs, so their decoded pixels are
    # identical. Rotating the untagged decode and storing it losslessly is
    # then "the physically rotated photo", and the outputs match exactly.
    tagged = exif_tagged(quadrants, "JPEG", 6)
    plain = encode(quadrants, "JPEG")
    with Image.open(io.BytesIO(plain)) as img:
        rotated = img.transpose(Image.Transpose.ROTATE_270)
    expected = decode_image(encode(rotated, "PNG"), draft=False)
    got = decode_image(tagged, draft=False)
    np.testing.assert_array_equal(got.pixels, expected.pixels)
    assert (got.width, got.height) == (48, 64)


@pytest.mark.parametrize("resize, tolerance", [("squash", 1), ("center_crop", 0)])
def test_exif_orientation_still_applies_after_draft(sample_bytes, resize, tolerance):
    # astronaut.jpg is 512x512, so draft decodes it at 1/2 scale (256x256).
    # The tagged file must come out as the untagged one turned 90 degrees
    # clockwise. center_crop of 256x256 is a pure crop, so exact; squash
    # resizes 256 -> 224 in two passes (rows, then columns) whose
    # intermediate rounding differs once the axes are swapped: 1 level.
    with Image.open(io.BytesIO(sample_bytes["astronaut.jpg"])) as img:
        img.load()
        tagged = exif_tagged(img, "JPEG", 6)
        plain = encode(img, "JPEG")
    got = decode_image(tagged, resize=resize).pixels.astype(np.int16)
    expected = np.rot90(decode_image(plain, resize=resize).pixels, k=-1)
    assert np.abs(got - expected).max() <= tolerance


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_is_the_one_orientation_rule(quadrants, orientation):
    # The public step decode_image and pipeline.tools.report's thumbnails share: the same turn
    # or flip as a viewer for all 8 tags (tags 2, 4, 5 and 7 mirror), and for the tag 1
    # (or none) the image itself, untouched. The viewer is Pillow's own ImageOps.exif_transpose,
    # which vgg.preprocess does not use: an implementation of the EXIF rule nobody here wrote.
    with Image.open(io.BytesIO(exif_tagged(quadrants, "PNG", orientation))) as img:
        turned = upright(img)
        if orientation == 1:
            assert turned is img
        want = ImageOps.exif_transpose(img)
        assert turned.size == want.size == ((48, 64) if orientation >= 5 else (64, 48))
        np.testing.assert_array_equal(np.asarray(turned.convert("RGB")), np.asarray(want.convert("RGB")))
        decoded = decode_image(exif_tagged(quadrants, "PNG", orientation))
        assert (decoded.width, decoded.height) == turned.size


# --- Resizing ---------------------------------------------------------------


@pytest.fixture(scope="session")
def stripes() -> bytes:
    """512x256 PNG: columns 0..127 red, 128..383 green, 384..511 blue."""
    arr = np.zeros((256, 512, 3), dtype=np.uint8)
    arr[:, :128] = RED
    arr[:, 128:384] = GREEN
    arr[:, 384:] = BLUE
    return encode(Image.fromarray(arr), "PNG")


def test_center_crop_keeps_only_the_centre(stripes):
    # The short side is already 256, so no scaling: the crop takes columns
    # (512 - 224) // 2 = 144 to 367, all inside the green band.
    out = decode_image(stripes, resize="center_crop")
    assert uniform(out) == GREEN
    assert (out.width, out.height) == (512, 256)


def test_center_crop_of_portrait_keeps_middle_rows(stripes):
    # The same picture turned on its side: rows instead of columns.
    with Image.open(io.BytesIO(stripes)) as img:
        portrait = encode(img.transpose(Image.Transpose.ROTATE_90), "PNG")
    assert uniform(decode_image(portrait, resize="center_crop")) == GREEN


def test_squash_keeps_everything(stripes):
    # Squash maps the full width onto 224 columns: the edges stay red and
    # blue, the middle green.
    out = decode_image(stripes, resize="squash").pixels
    assert tuple(out[100, 0]) == RED
    assert tuple(out[100, 112]) == GREEN
    assert tuple(out[100, 223]) == BLUE


def test_center_crop_matches_resize_then_crop(sample_bytes):
    # 451x300: the short side 300 -> 256, the long side 451 * 256 / 300 =
    # 384.9 -> 385; crop left (385 - 224) // 2 = 80, top 16. The module
    # resamples only that window; float rounding of the window's position
    # may flip a value by 1 level (measured: 1 level, on <1% of values).
    with Image.open(io.BytesIO(sample_bytes["chelsea.png"])) as img:
        full = img.convert("RGB").resize((385, 256), Image.Resampling.BILINEAR)
    expected = np.asarray(full.crop((80, 16, 304, 240)), dtype=np.int16)
    got = decode_image(sample_bytes["chelsea.png"], resize="center_crop").pixels
    diff = np.abs(got.astype(np.int16) - expected)
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01


def test_squash_is_pillow_bilinear(sample_bytes):
    # PNG has no draft mode, so squash is exactly one bilinear resize.
    with Image.open(io.BytesIO(sample_bytes["chelsea.png"])) as img:
        expected = np.asarray(img.convert("RGB").resize((224, 224), Image.BILINEAR))
    got = decode_image(sample_bytes["chelsea.png"]).pixels
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("size", [(1, 1), (1, 5000), (5000, 1)])
@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_degenerate_sizes(size, resize):
    # center_crop of 1x5000 scales to 256x1280000 in principle; only the
    # kept window is resampled, so this stays instant.
    out = decode_image(encode(Image.new("RGB", size, RED), "PNG"), resize=resize)
    assert uniform(out) == RED
    assert (out.width, out.height) == size


# --- JPEG draft mode --------------------------------------------------------


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_draft_tolerance_on_large_photo(sample_bytes, resize):
    # retina.jpg is 1411x1411, so draft decodes it at 1/4 scale (353x353 >=
    # 256 >= 224; 1/8 would give 177). Measured with Pillow 12.3 against
    # draft=False: mean |diff| 0.47 (squash) / 0.53 (center_crop) levels,
    # 99th percentile 5 / 3, worst 36 / 35 at the sharp dark rim of the
    # fundus. Bounds below add margin for other libjpeg builds.
    data = sample_bytes["retina.jpg"]
    fast = decode_image(data, resize=resize).pixels.astype(np.int16)
    exact = decode_image(data, resize=resize, draft=False).pixels.astype(np.int16)
    diff = np.abs(fast - exact)
    assert diff.max() > 0  # draft really took effect
    assert diff.mean() <= 0.75
    assert np.percentile(diff, 99) <= 8
    assert diff.max() <= 48


def test_draft_does_not_change_reported_size(sample_bytes):
    out = decode_image(sample_bytes["retina.jpg"])
    assert (out.width, out.height) == (1411, 1411)


def test_draft_is_a_no_op_for_png(sample_bytes):
    data = sample_bytes["chelsea.png"]
    np.testing.assert_array_equal(decode_image(data).pixels, decode_image(data, draft=False).pixels)


# --- Multi-frame ------------------------------------------------------------


def test_multi_frame_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with Image.open(io.BytesIO(data)) as img:
        assert img.n_frames == 3
    assert uniform(decode_image(data)) == RED


def test_mpo_uses_first_picture():
    # An MPO (a camera's multi-picture JPEG) is allowed, though opened by the JPEG parser, and
    # its first picture is used. Flat red survives JPEG to within a level or two.
    pictures = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN)]
    data = encode(pictures[0], "MPO", save_all=True, append_images=pictures[1:])
    with Image.open(io.BytesIO(data)) as img:
        assert (img.format, img.n_frames) == ("MPO", 2)
    assert np.abs(np.subtract(uniform(decode_image(data)), RED)).max() <= 2


def test_multi_page_tiff_uses_first_page():
    pages = [Image.new("RGB", (16, 16), c) for c in (BLUE, RED)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert uniform(decode_image(data)) == BLUE


# --- Errors -------------------------------------------------------------------


def error_type_of(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(data, **kwargs)
    return info.value.error_type


@pytest.mark.parametrize("data", [b"", bytearray()])
def test_empty(data):
    assert error_type_of(data) == "empty"


@pytest.mark.parametrize(
    "content",
    [
        b"just some text, not a photo\n",
        b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    ],
    ids=["text", "html", "pdf", "random"],
)
def test_not_an_image_named_jpg(tmp_path, content):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.error_type == "not_an_image"
    assert f"{len(content)} bytes" in str(info.value)


def test_not_an_image_message_names_html():
    with pytest.raises(ImageError, match="looks like HTML"):
        decode_image(b"<html><body>Access denied</body></html>")


@pytest.mark.parametrize("name", ["astronaut.jpg", "chelsea.png"])
def test_cut_in_half_is_truncated(sample_bytes, name):
    data = sample_bytes[name]
    with pytest.raises(ImageError) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.error_type == "truncated"
    # Pillow's own words are kept in the message.
    assert "image file is truncated" in str(info.value)


def test_truncated_inside_header(sample_bytes):
    # 100 bytes of a JPEG: Pillow cannot even identify it, but the bytes
    # start like a JPEG and never reach the end-of-image marker.
    assert error_type_of(sample_bytes["astronaut.jpg"][:100]) == "truncated"


def test_truncated_webp_is_told_by_its_stated_size():
    # Pillow only says "could not create decoder object" for a cut WebP; the
    # RIFF header states the full length, which the data falls short of.
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "WEBP")
    with pytest.raises(ImageError) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.error_type == "truncated"
    assert "could not create decoder object" in str(info.value)


def test_png_bad_header_crc_is_corrupt(sample_bytes):
    # Every byte is present (the file still ends with IEND), but the IHDR
    # checksum does not match: damage, not truncation, hence "corrupt".
    # (Pillow does not verify IDAT checksums, so the header's is broken.)
    data = bytearray(sample_bytes["chelsea.png"])
    crc_at = 8 + 4 + 4 + 13  # signature, length, "IHDR", 13-byte body
    data[crc_at] ^= 0xFF
    with pytest.raises(ImageError) as info:
        decode_image(bytes(data))
    assert info.value.error_type == "corrupt"
    assert "bad header checksum in b'IHDR'" in str(info.value)


def test_png_damaged_pixel_data_is_corrupt():
    # A flipped byte inside the zlib stream of a complete PNG: zlib reports
    # invalid data, which Pillow calls "broken data stream". All bytes are
    # there, so this is "corrupt", not "truncated".
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = bytearray(encode(Image.fromarray(noise), "PNG"))
    data[33 + 8 + 100] ^= 0xFF  # 100 bytes into the first IDAT's body
    with pytest.raises(ImageError) as info:
        decode_image(bytes(data))
    assert info.value.error_type == "corrupt"
    assert "broken data stream" in str(info.value)


def test_too_large_via_max_pixels(sample_bytes):
    data = sample_bytes["chelsea.png"]
    assert decode_image(data, max_pixels=451 * 300).width == 451
    with pytest.raises(ImageError) as info:
        decode_image(data, max_pixels=451 * 300 - 1)
    assert info.value.error_type == "too_large"
    assert "451x300 = 135300 pixels" in str(info.value)


def test_too_large_header_only_bomb():
    # 20000 x 20000 = 4e8 pixels, over twice Pillow's limit: Pillow itself
    # raises DecompressionBombError at open, reported as too_large.
    assert error_type_of(png_header_only(20_000, 20_000)) == "too_large"


def test_too_large_in_pillows_warning_zone():
    # 10000 x 10000 = 1e8 pixels, between Pillow's limit and twice it: Pillow
    # only warns, the module still refuses, and nothing was decoded (the
    # file holds no pixel data, which decoding would report as truncated).
    with pytest.warns(Image.DecompressionBombWarning):
        assert error_type_of(png_header_only(10_000, 10_000)) == "too_large"


def test_limit_holds_when_pillow_check_is_disabled(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert error_type_of(png_header_only(20_000, 20_000)) == "too_large"


@pytest.mark.parametrize("fmt", ["PPM", "TGA"])
def test_unsupported_format(fmt):
    data = encode(Image.new("RGB", (8, 8), RED), fmt)
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.error_type == "unsupported_format"
    assert f"{fmt} images are not accepted" in str(info.value)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "WEBP"])
def test_other_allowed_formats_decode(fmt):
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(Image.new("RGB", (8, 8), RED), fmt, **kwargs)
    assert uniform(decode_image(data)) == RED


# Formats Pillow reads and writes here that are not accepted: each is named by its signature.
REFUSED = ("PPM", "TGA", "PCX", "ICO", "JPEG2000", "SGI", "DDS", "QOI", "EPS")


@pytest.fixture
def parsers_run(monkeypatch) -> list[str]:
    """The Pillow formats whose parser is handed bytes to open, in the order they are tried."""
    Image.init()
    seen = []
    for fmt, (factory, accept) in list(Image.OPEN.items()):

        def spy(*args, _fmt=fmt, _factory=factory):
            seen.append(_fmt)
            return _factory(*args)

        monkeypatch.setitem(Image.OPEN, fmt, (spy, accept))
    return seen


@pytest.mark.parametrize("fmt", REFUSED)
def test_refused_formats_never_reach_their_parser(fmt, parsers_run):
    # Untrusted bytes are opened by the accepted formats' parsers only (OPEN_FORMATS); a file
    # in another format Pillow knows is named from its first bytes (TGA: its footer), never
    # parsed, so a flaw in, say, the PCX parser cannot be reached through this job.
    data = encode(Image.new("RGB", (8, 8), RED), fmt)
    with pytest.raises(ImageError) as info:
        open_image(data)
    assert str(info.value).startswith(f"unsupported_format: {fmt} images are not accepted (accepted: ")
    assert set(parsers_run) <= set(OPEN_FORMATS)


def test_only_accepted_parsers_run_on_anything(parsers_run, sample_bytes):
    # Pillow tries TGA's parser on any bytes no other plugin claims (TGA has no signature);
    # here no parser outside OPEN_FORMATS ever runs, on images or on junk.
    junk = bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8))
    for data in (sample_bytes["chelsea.png"], sample_bytes["coffee.jpg"], junk, b"<html>"):
        try:
            decode_image(data)
        except ImageError:
            pass
    assert set(parsers_run) <= set(OPEN_FORMATS) and {"PNG", "JPEG"} <= set(parsers_run)
    # An MPO has no parser of its own: the JPEG parser opens it, as an allowed "MPO".
    assert ALLOWED_FORMATS == {*OPEN_FORMATS, "MPO"}


# --- Files --------------------------------------------------------------------


def test_load_image_leaves_no_file_open(tmp_path, sample_bytes):
    fd_dir = pathlib.Path("/proc/self/fd")
    if not fd_dir.exists():
        pytest.skip("needs /proc to count open files")
    path = tmp_path / "cat.png"
    path.write_bytes(sample_bytes["chelsea.png"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(sample_bytes["astronaut.jpg"][:5000])
    before = len(os.listdir(fd_dir))
    for _ in range(10):
        load_image(path)
        with pytest.raises(ImageError):
            load_image(bad)
    assert len(os.listdir(fd_dir)) == before


def test_thumbnail_reports_the_whole_image_as_displayed():
    # 300x200 stored, EXIF 6 (a quarter turn): displayed 200x300. The JPEG decodes at half
    # scale (draft to at least 64 px), yet the size reported is the whole displayed image's,
    # as decode_image reports it; the thumbnail fits 64 px on its long side: 64 high.
    data = exif_tagged(Image.new("RGB", (300, 200), RED), "JPEG", 6)
    thumb = preprocess.thumbnail_image(data, size=64)
    assert (thumb.width, thumb.height) == (200, 300) == (decode_image(data).width, decode_image(data).height)
    assert thumb.pixels.shape[0] == 64 and thumb.pixels.shape[1] < 64 and thumb.pixels.shape[2] == 3
