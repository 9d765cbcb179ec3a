"""Decodes image bytes into the 224x224 RGB uint8 arrays that VGG16 expects.

This is the one place that defines preprocessing and its vocabulary (``RESIZE_MODES``,
``ERROR_TYPES``); it knows nothing of Beam or TensorFlow (Pillow, numpy and the
TensorFlow-free ``vgg.architecture`` only), so it runs unchanged on any worker.

What ``decode_image`` does, in order:

1. Identifies the bytes with Pillow's parsers for ``ALLOWED_FORMATS`` only
   (``open_image``): no other parser ever sees them. A file in another format
   Pillow knows is named by its signature alone, for the message.
2. Checks width x height against ``max_pixels`` *before* decoding any pixel.
3. For JPEG with ``draft=True``, asks libjpeg to decode at a reduced scale
   (1/2, 1/4 or 1/8) that still leaves both sides at least as large as the
   resize needs (224 for "squash", 256 for "center_crop"). On the bundled
   1411x1411 ``samples/retina.jpg`` (decoded at 1/4 scale) the output moves
   by a mean of 0.47 ("squash") / 0.53 ("center_crop") levels out of 255
   against ``draft=False``; 99% of values within 5 / 3 levels, the worst
   36 / 35 levels on sharp edges (Pillow 12.3; the test allows mean <= 0.75,
   99th percentile <= 8, max <= 48). Pass ``draft=False`` for exact
   full-resolution decoding.
4. Multi-frame images (animated GIF/PNG/WebP, multi-page TIFF, MPO) use the
   first frame only.
5. Converts every mode to RGB (see ``to_rgb``): transparent pixels are
   composited over ``background`` (white by default), 16-bit samples are
   scaled to 8 bits, float samples are clipped to 0..255.
6. Applies the EXIF orientation tag (``upright``), so a photo that a camera
   stored sideways comes out the way viewers display it. ``width`` and
   ``height`` are the size as displayed, at full resolution (before draft and
   resize).
7. Resizes with bilinear filtering, as the 2016 seed did through
   ``scipy.misc.imresize``: "squash" stretches straight to 224x224;
   "center_crop" scales the shorter side to 256 and keeps the centre
   224x224. Only the kept region is resampled, which matches resizing the
   whole image then cropping to within 1 level (float rounding).

Colour profiles (ICC) are ignored, as in the seed. A bad input raises
``ImageError``, whose ``error_type`` is a key of ``ERROR_TYPES``.

Importing this module lets Pillow keep ``KEPT_IMAGE_BLOCKS`` freed image buffers for
the next image (Pillow keeps none by default, ``PILLOW_BLOCKS_MAX``): one decode makes
three images (decoded, resized once per axis), and without the cache each is fresh
memory that the kernel maps and zeroes page by page. The pixels are the same either
way; the decoder's rate with and without is in docs/benchmarks.md ("Decode cost"). A
``PILLOW_BLOCKS_MAX`` set in the environment is left as it is.
"""

import dataclasses
import io
import os
import struct

import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
)

from vgg.architecture import IMAGE_SIZE
from vgg.errors import ClassifiedError

RESIZE_MODES = ("squash", "center_crop")  # the default first
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP"})
# The Pillow parsers that may see untrusted bytes: those of ALLOWED_FORMATS. An MPO (a
# multi-picture JPEG) has no parser of its own: Pillow's JPEG parser opens it as one.
OPEN_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# Pillow's default Image.MAX_IMAGE_PIXELS, copied so that code elsewhere
# changing that global cannot loosen this module's limit.
MAX_PIXELS: int = 89_478_485
ERROR_TYPES: dict[str, str] = {
    "empty": "the input has no bytes",
    "not_an_image": "the bytes are not an image (text, HTML, PDF, random data)",
    "unsupported_format": "an image, but in a format or mode that is not accepted",
    "truncated": "the image data ends before the image does (partial download)",
    "too_large": "width x height is over max_pixels (possible decompression bomb)",
    "corrupt": "the image data is damaged (bad header, checksum or compressed data)",
}

# Freed image blocks Pillow keeps for reuse in every process that imports this module:
# one decode's three images, and one more. A block is at most PILLOW_BLOCK_SIZE (16 MiB by
# default; a large image spans several), so at most 4 such blocks stay held between images.
KEPT_IMAGE_BLOCKS = 4

_CROP_SHORT_SIDE = 256
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
# Errors Pillow's plugins raise on bad data, at open or at load.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    EOFError,
    ValueError,
    IndexError,
    TypeError,
    struct.error,
)
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
# Image formats Pillow reads but the job refuses, by their leading bytes (more in
# _refused_format). Their parsers never run: the signature only names them in the error.
_REFUSED_SIGNATURES = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),  # a JP2 file
    (b"\xffO\xffQ", "JPEG2000"),  # a bare codestream (.j2k)
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"\x01\xda", "SGI"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),  # DOS EPS binary header
)
# Used only to recover Pillow's reason when Image.open says no more than
# "cannot identify image file".
_PLUGINS = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "GIF": GifImagePlugin.GifImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
}


def _keep_image_blocks() -> None:
    if "PILLOW_BLOCKS_MAX" not in os.environ and Image.core.get_blocks_max() < KEPT_IMAGE_BLOCKS:
        Image.core.set_blocks_max(KEPT_IMAGE_BLOCKS)


_keep_image_blocks()


class ImageError(ClassifiedError, ValueError):
    """A bad input image. error_type is one of ERROR_TYPES; str() is "error_type: detail"."""

    def __init__(self, error_type: str, message: str):
        if error_type not in ERROR_TYPES:
            raise ValueError(
                f"error_type must be one of {sorted(ERROR_TYPES)}. Received: error_type={error_type!r}"
            )
        super().__init__(error_type, message)

    def __str__(self) -> str:
        return f"{self.error_type}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """One decoded image.

    Attributes:
        pixels: uint8 array of shape (224, 224, 3), RGB, C-contiguous and
            read-only.
        width: Width of the image as displayed (after EXIF orientation), in
            pixels, before any resizing.
        height: Height, likewise.
    """

    pixels: np.ndarray
    width: int
    height: int


def decode_image(
    data: bytes,
    *,
    resize: str = RESIZE_MODES[0],
    draft: bool = True,
    max_pixels: int = MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> DecodedImage:
    """Decodes encoded image bytes into a 224x224 RGB array.

    Args:
        data: The encoded file, e.g. the bytes of a JPEG.
        resize: "squash" (stretch to 224x224) or "center_crop" (shorter side
            to 256, then the centre 224x224).
        draft: Let libjpeg decode JPEGs at a reduced scale; faster, and
            within the tolerance stated in the module docstring.
        max_pixels: Largest width x height accepted, checked before decoding.
        background: RGB colour that transparent pixels are composited over.

    Returns:
        The pixels, plus the displayed width and height of the original.

    Raises:
        ValueError: An argument other than ``data`` is invalid.
        ImageError: ``data`` is not a usable image; see ``error_type``.
    """
    _check_options(resize, max_pixels, background)
    data = _checked_bytes(data)
    with open_image(data) as img:
        return _decode_opened(img, data, resize, draft, max_pixels, background)


def open_image(data: bytes) -> Image.Image:
    """Identifies untrusted image bytes with the parsers of the accepted formats only.

    Only the header is read (Pillow opens lazily); the caller loads, and closes the image.
    Every tool that opens untrusted images goes through here, so no other Pillow parser
    ever sees their bytes.

    Raises:
        ImageError: the bytes are empty, not an image, in a format that is not accepted
            ("unsupported_format", told by its signature), or damaged in their header.
    """
    data = _checked_bytes(data)
    try:
        return Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # The Warning arrives as an exception only when a warnings filter
        # says "error"; either way it means the image is too large.
        raise ImageError("too_large", f"Pillow refused the image: {e}") from e
    except UnidentifiedImageError as e:
        raise _unidentified(data) from e
    except _DECODE_ERRORS as e:
        raise _decode_failure(e, data, _signature_format(data) or "image") from e


def upright(img: Image.Image) -> Image.Image:
    """The image as viewers display it: turned and flipped as its EXIF orientation tag says.

    The one orientation rule of the project (``decode_image``, ``pipeline.tools.report``'s
    thumbnails). A missing, unreadable or unknown tag leaves the image as stored. The
    result still carries the tag, so apply this once.
    """
    method = _TRANSPOSE.get(_orientation(img))
    return img if method is None else img.transpose(method)


def load_image(
    path: str | os.PathLike,
    *,
    resize: str = RESIZE_MODES[0],
    draft: bool = True,
    max_pixels: int = MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> DecodedImage:
    """Reads a local image file and decodes it; see ``decode_image``.

    Raises:
        OSError: The file cannot be read (missing, permissions).
        ValueError: An argument other than ``path`` is invalid.
        ImageError: The file is not a usable image; see ``error_type``.
    """
    _check_options(resize, max_pixels, background)
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data, resize=resize, draft=draft, max_pixels=max_pixels, background=background)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Converts an image of any Pillow mode to mode "RGB".

    - "1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX": Pillow's own
      conversion (which also undoes Adobe's inverted CMYK in JPEGs).
    - Transparency ("LA", "La", "PA", "RGBA", "RGBa", and 8-bit modes with
      a transparency key, e.g. a GIF's "P"): alpha-composited over
      ``background``, each channel ``round((src * a + bg * (255 - a)) / 255)``.
    - 16-bit ("I;16", "I;16B", "I;16L", "I;16N", and "I", which is assumed
      to hold 16-bit samples and is clipped to 0..65535): each sample
      becomes ``round(value / 257)``, so 65535 maps to 255.
    - "F" (32-bit float): rounded and clipped to 0..255 (NaN becomes 0), on
      the view that float images are usually stored on the 8-bit scale.

    Returns ``img`` itself when it is already "RGB" with no transparency.

    Raises:
        ImageError: "unsupported_format" for a mode Pillow cannot convert.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        samples = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        # (v + 128) // 257 is v / 257 rounded; no v lands exactly on .5.
        grey = ((samples + 128) // 257).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        samples = np.nan_to_num(np.asarray(img), nan=0.0)
        grey = np.clip(np.rint(samples), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.has_transparency_data:
        return _composite(img, background)
    if mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ImageError(
            "unsupported_format",
            f"image mode {mode!r} cannot be converted to RGB ({e}); "
            "convert the file to an 8-bit RGB JPEG or PNG",
        ) from e


def _check_options(resize: str, max_pixels: int, background: tuple[int, int, int]) -> None:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}. Received: resize={resize!r}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int. Received: max_pixels={max_pixels!r}")
    if (
        not isinstance(background, tuple)
        or len(background) != 3
        or not all(isinstance(c, int) and 0 <= c <= 255 for c in background)
    ):
        raise ValueError(
            "background must be a tuple of 3 ints in 0..255, e.g. (255, 255, 255). "
            f"Received: background={background!r}"
        )


def _decode_opened(
    img: Image.Image,
    data: bytes,
    resize: str,
    draft: bool,
    max_pixels: int,
    background: tuple[int, int, int],
) -> DecodedImage:
    needed = IMAGE_SIZE if resize == "squash" else _CROP_SHORT_SIDE
    width, height = _load_checked(img, data, max_pixels, needed if draft else None)
    # Turning before the conversion to RGB gives the same pixels: both only move or map them.
    rgb = to_rgb(upright(img), background)
    if resize == "squash":
        out = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    else:
        out = _center_crop(rgb)
    pixels = np.asarray(out, dtype=np.uint8)
    return DecodedImage(pixels=pixels, width=width, height=height)


def thumbnail_image(data: bytes, *, size: int = 128, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decodes an image as decode_image does (same formats, limit and EXIF rule), shrunk to fit size x size.

    Returns:
        A DecodedImage whose pixels are the thumbnail (h, w, 3), aspect ratio kept, and
        whose width and height are the whole image's as displayed.

    Raises:
        ImageError: as decode_image.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1. Received: size={size}")
    with open_image(data) as img:
        width, height = _load_checked(img, data, max_pixels, size)  # JPEG: at a reduced scale
        small = to_rgb(upright(img))
        small.thumbnail((size, size))
        pixels = np.asarray(small, dtype=np.uint8)
    return DecodedImage(pixels=pixels, width=width, height=height)


def jpeg_bytes(pixels: np.ndarray, *, quality: int = 80) -> bytes:
    """RGB uint8 pixels (h, w, 3) as a JPEG file's bytes (pixels this process made: trusted)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _load_checked(img: Image.Image, data: bytes, max_pixels: int, draft_size: int | None) -> tuple[int, int]:
    """Checks an opened image's format and pixel count (from the header), then decodes it.

    With draft_size, libjpeg may decode at a reduced scale no smaller than that square.

    Returns:
        The image's width and height as displayed (after EXIF orientation), full size.

    Raises:
        ImageError: not an accepted format, over max_pixels, or the data fails to decode.
    """
    fmt = img.format
    if fmt not in ALLOWED_FORMATS:
        raise _not_accepted(fmt)
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            "too_large",
            f"the image is {width}x{height} = {width * height} pixels, over "
            f"max_pixels={max_pixels}; it may be a decompression bomb. "
            "Downscale it, or raise max_pixels if it is genuine",
        )
    if draft_size is not None:
        # Square request, so EXIF orientation (applied later) cannot matter.
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
    except _DECODE_ERRORS as e:
        raise _decode_failure(e, data, fmt) from e
    if _orientation(img) in _QUARTER_TURNS:  # displayed on its side: width and height trade
        width, height = height, width
    return width, height


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:
        # Broken EXIF should not cost us an otherwise good photo.
        return 1
    return value if isinstance(value, int) else 1


def _composite(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode == "La":
        # Pillow cannot convert "La" directly; "RGBa" it can.
        la = np.asarray(img)
        rgba_p = np.dstack([la[..., 0], la[..., 0], la[..., 0], la[..., 1]])
        img = Image.frombytes("RGBa", img.size, np.ascontiguousarray(rgba_p).tobytes())
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    out = Image.new("RGB", rgba.size, background)
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def _center_crop(rgb: Image.Image) -> Image.Image:
    width, height = rgb.size
    short, long = min(width, height), max(width, height)
    # Shorter side to 256; the longer side scaled to match, rounded half up.
    scaled_long = (long * _CROP_SHORT_SIDE + short // 2) // short
    if width <= height:
        new_w, new_h = _CROP_SHORT_SIDE, scaled_long
    else:
        new_w, new_h = scaled_long, _CROP_SHORT_SIDE
    left, top = (new_w - IMAGE_SIZE) // 2, (new_h - IMAGE_SIZE) // 2
    # Resample only the kept region (as a box in source coordinates): a
    # 1x5000 image would otherwise become a 256x1280000 intermediate.
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + IMAGE_SIZE) * sx, (top + IMAGE_SIZE) * sy)
    return rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR, box=box)


def _checked_bytes(data) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"data must be the bytes of an encoded image. Received: data of type {type(data).__name__}"
        )
    if len(data) == 0:
        raise ImageError("empty", "the input has 0 bytes; check that the file was read in full")
    return bytes(data)


def _not_accepted(fmt: str) -> ImageError:
    return ImageError(
        "unsupported_format",
        f"{fmt} images are not accepted (accepted: "
        f"{', '.join(sorted(ALLOWED_FORMATS))}); convert the file to JPEG or PNG",
    )


def _refused_format(data: bytes) -> str | None:
    """The name of an image format Pillow reads but the job refuses, from its signature alone."""
    if data.endswith(b"TRUEVISION-XFILE.\x00"):  # TGA has no leading signature, only this footer
        return "TGA"
    for magic, fmt in _REFUSED_SIGNATURES:
        if data.startswith(magic):
            return fmt
    if len(data) > 2 and data[:1] == b"P" and data[1] in b"1234567" and data[2:3].isspace():
        return "PPM"  # netpbm: PBM, PGM, PPM (P1-P6), PAM (P7)
    if len(data) > 3 and data[0] == 0x0A and data[1] in (0, 2, 3, 4, 5) and data[2] == 1:
        return "PCX"  # manufacturer 10, a known version, run-length encoding
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
        return "AVIF" if data[8:11] == b"avi" else "HEIF"
    return None


def _signature_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    return None


def _ends_early(data: bytes, fmt: str) -> bool:
    """Whether the bytes stop before the format's end marker or stated size."""
    if fmt == "PNG":
        return data.rfind(b"IEND") == -1
    if fmt in ("JPEG", "MPO"):
        # The image's end marker follows its last start-of-scan; an EXIF
        # thumbnail earlier in the file has its own pair, so look after.
        return data.find(b"\xff\xd9", max(data.rfind(b"\xff\xda"), 0)) == -1
    if fmt == "GIF":
        return not data.endswith(b";")
    if fmt == "WEBP":
        return len(data) < int.from_bytes(data[4:8], "little") + 8
    if fmt == "BMP":
        # 14-byte file header, whose bytes 2..6 state the file size.
        return len(data) < max(14, int.from_bytes(data[2:6], "little"))
    if fmt == "TIFF":
        # Bytes 4..8 point at the first directory of tags.
        order = "little" if data.startswith(b"II") else "big"
        return len(data) < max(8, int.from_bytes(data[4:8], order) + 2)
    return False


def _decode_failure(error: Exception, data: bytes, fmt: str) -> ImageError:
    return _classify(
        f"{type(error).__name__}: {error}",
        # Plugins hit EOFError or struct.error (which ImageFile rewraps as
        # SyntaxError) when they read past the end of the data.
        isinstance(error, (EOFError, IndexError, struct.error))
        or isinstance(error.__cause__, struct.error)
        or "truncat" in str(error).lower(),
        data,
        fmt,
    )


def _classify(reason: str, says_truncated: bool, data: bytes, fmt: str) -> ImageError:
    if says_truncated or _ends_early(data, fmt):
        return ImageError(
            "truncated",
            f"the {fmt} data ({len(data)} bytes) ends before the image is "
            f"complete (Pillow: {reason}); it was probably cut short by a "
            "partial download or copy, so fetch it again",
        )
    return ImageError(
        "corrupt",
        f"the {fmt} data ({len(data)} bytes) is damaged and cannot be decoded (Pillow: {reason})",
    )


def _unidentified(data: bytes) -> ImageError:
    fmt = _signature_format(data)
    refused = _refused_format(data) if fmt is None else None
    if refused is not None:
        return _not_accepted(refused)
    if fmt is None:
        head = data[:16].lstrip().lower()
        if head.startswith(b"<"):
            looks = "it looks like HTML/XML, e.g. an error page saved as an image"
        elif head.startswith(b"%pdf"):
            looks = "it looks like a PDF document"
        else:
            looks = "no known image signature"
        return ImageError(
            "not_an_image",
            f"Pillow cannot identify these {len(data)} bytes as an image ({looks}; they start {data[:16]!r})",
        )
    # Pillow's own message here is only "cannot identify image file"; ask
    # the plugin directly for its reason.
    reason = "cannot identify image file"
    plugin = _PLUGINS.get(fmt)
    if plugin is not None:
        try:
            plugin(io.BytesIO(data)).close()
        except Exception as e:  # Whatever it raises is the reason we want.
            return _decode_failure(e, data, fmt)
    return _classify(reason, False, data, fmt)
