"""Decodes batches of JPEGs with NVIDIA DALI (nvJPEG on a GPU) into VGG16's 224x224 uint8 RGB input.

The optional GPU path of the decode step (`--decode_device gpu`). ``vgg.preprocess`` stays
the definition of preprocessing: this module reproduces its JPEG path as closely as DALI
allows, and takes only the images for which that holds. What it does per image:

1. Reads the header with the same Pillow parser as ``vgg.preprocess.open_image`` (no pixel
   is decoded there) and takes only a plain JPEG: one picture (not MPO), 8-bit greyscale
   or YCbCr (not CMYK/YCCK, nor Adobe's untransformed RGB), baseline or progressive
   Huffman coding, complete (its end marker after its last scan), and width x height
   within ``max_pixels``. Everything else is left to ``vgg.preprocess`` (``None``), which
   gives it today's pixels or today's error.
2. Decodes at full resolution (DALI has no reduced-scale draft decode) with libjpeg's
   "fancy" chroma upsampling, as Pillow does; a JPEG DALI fails on is also left to
   ``vgg.preprocess``.
3. Resizes with a linear filter, antialiased when shrinking (Pillow's BILINEAR), in the
   image's stored orientation: "squash" the whole image to 224x224, "center_crop" the
   region that ``vgg.preprocess`` keeps, mapped back from the displayed image.
4. Applies the EXIF orientation to the 224x224 result (the same tag reading as
   ``vgg.preprocess``). Turning a square output after resizing equals resizing the turned
   image, so the result stands for ``decode_image``'s.

The pixels differ from ``decode_image``'s by the draft decode and the resampling
arithmetic; tests/vgg/test_dali.py holds the bounds. On ``device="gpu"`` the decoding runs
in this process on the GPU: unlike the sandboxed CPU path, a crash in nvJPEG is not
contained.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import threading
from collections.abc import Sequence

import numpy as np

from vgg.architecture import IMAGE_SIZE
from vgg.preprocess import (
    _CROP_SHORT_SIDE,
    MAX_PIXELS,
    RESIZE_MODES,
    DecodedImage,
    ImageError,
    _orientation,
    open_image,
)

DEVICES = ("gpu", "cpu")
EXTRA = "gpu-decode"
INSTALL = f"pip install 'vgg16-beam[{EXTRA}]'"
# JPEG start-of-frame markers DALI takes: baseline, extended and progressive Huffman coding.
_SOF_TAKEN = frozenset({0xC0, 0xC1, 0xC2})
_SOF_ANY = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4/C8/CC are DHT, JPG, DAC
_ONE_SHOT_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length field
_SOS, _EOI = 0xDA, 0xD9
# What may stand between the scans of a progressive JPEG: tables, restart interval, comments, APPn.
_BETWEEN_SCANS = frozenset({0xC4, 0xCC, 0xDA, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)})
# In compressed data a 0xFF byte is followed by 0x00 (a stuffed 0xFF), a restart marker or more
# 0xFF fill bytes; anything else is a marker.
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


class DaliUnavailable(RuntimeError):
    """DALI is not installed here, or (device "gpu") there is no GPU it can use."""


def import_dali():
    """The `nvidia.dali` package.

    Raises:
        DaliUnavailable: it is not installed (or does not load), naming the extra to install.
    """
    try:
        # Optional: only the GPU decode path needs it. Its fn and types modules are used as dali.fn,
        # dali.types.
        dali = importlib.import_module("nvidia.dali")
        for module in ("fn", "types"):
            importlib.import_module(f"nvidia.dali.{module}")
    except (ImportError, OSError) as error:
        raise DaliUnavailable(
            f"NVIDIA DALI is not installed here ({error}); install the '{EXTRA}' extra: {INSTALL}"
        ) from None
    return dali


@dataclasses.dataclass(frozen=True)
class Plan:
    """What DALI does with one JPEG.

    Attributes:
        width: the image's width as displayed (after EXIF orientation), full size.
        height: likewise.
        orientation: its EXIF orientation, 1..8 (1: as stored).
        roi_start: the region to resize, (y, x) in stored pixels, top left.
        roi_end: its bottom right.
    """

    width: int
    height: int
    orientation: int
    roi_start: tuple[float, float]
    roi_end: tuple[float, float]


def plan(data: bytes, *, resize: str = RESIZE_MODES[0], max_pixels: int = MAX_PIXELS) -> Plan | None:
    """How DALI decodes these bytes, or None when they are left to vgg.preprocess (see the module)."""
    if not isinstance(data, bytes) or not _clean_jpeg(data):
        return None
    try:
        with open_image(data) as img:
            fmt, mode, (stored_w, stored_h) = img.format, img.mode, img.size
            adobe_rgb = img.info.get("adobe_transform") == 0 and mode == "RGB"
            orientation = _orientation(img)
    except ImageError:
        return None
    if fmt != "JPEG" or mode not in ("L", "RGB") or adobe_rgb or stored_w * stored_h > max_pixels:
        return None
    if orientation not in range(1, 9):
        orientation = 1  # an unknown tag leaves the image as stored, as vgg.preprocess.upright does
    turned = orientation in _QUARTER_TURNS
    width, height = (stored_h, stored_w) if turned else (stored_w, stored_h)
    if resize == "squash":
        box = (0.0, 0.0, float(width), float(height))
    else:
        box = _crop_box(width, height)
    (x0, y0), (x1, y1) = (_stored_point(orientation, x, y, stored_w, stored_h) for x, y in _corners(box))
    return Plan(
        width=width,
        height=height,
        orientation=orientation,
        roi_start=(min(y0, y1), min(x0, x1)),
        roi_end=(max(y0, y1), max(x0, x1)),
    )


def oriented(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """pixels (h, w, 3) in stored orientation -> as displayed (the EXIF tag applied), read-only, C order."""
    turn = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, k=-1),  # Pillow's ROTATE_270: a quarter turn clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, k=1),
    }.get(orientation)
    out = np.ascontiguousarray(pixels if turn is None else turn(pixels))
    out.setflags(write=False)
    return out


class DaliDecoder:
    """Decodes batches of image bytes with a DALI pipeline; what DALI cannot take comes back as None.

    Not thread-safe: one per thread (a Beam DoFn instance is one thread at a time).

    Args:
        device: "gpu" (DALI's mixed decoder: nvJPEG, then resizing on GPU `device_id`) or
            "cpu" (the same pipeline on the CPU: how it is tested without a GPU).
        resize: one of vgg.preprocess.RESIZE_MODES.
        batch_size: most images per DALI run; longer lists are split.
        max_pixels: largest width x height DALI takes; larger images are left to
            vgg.preprocess, which refuses them ("too_large").
        threads: DALI's CPU worker threads.
        device_id: the GPU, with device "gpu".

    Raises:
        ValueError: a bad argument.
        DaliUnavailable: DALI is not installed, or (device "gpu") no GPU can run the pipeline.
    """

    def __init__(
        self,
        *,
        device: str = DEVICES[0],
        resize: str = RESIZE_MODES[0],
        batch_size: int = 64,
        max_pixels: int = MAX_PIXELS,
        threads: int = 2,
        device_id: int = 0,
    ):
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}. Received: device={device!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}. Received: resize={resize!r}")
        if batch_size < 1 or threads < 1:
            raise ValueError(
                f"batch_size and threads must be at least 1. Received: batch_size={batch_size}, "
                f"threads={threads}"
            )
        self.device, self.resize, self.batch_size = device, resize, batch_size
        self._max_pixels, self._threads, self._device_id = max_pixels, threads, device_id
        self._dali = import_dali()
        self._lock = threading.Lock()
        self._pipe = self._build()

    def _build(self):
        dali = self._dali
        fn, types = dali.fn, dali.types

        @dali.pipeline_def(
            batch_size=self.batch_size,
            num_threads=self._threads,
            device_id=self._device_id if self.device == "gpu" else None,
            prefetch_queue_depth=1,
        )
        def pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
            images = fn.decoders.image(
                encoded,
                device="mixed" if self.device == "gpu" else "cpu",
                output_type=types.RGB,
                adjust_orientation=False,  # applied after resizing, from vgg.preprocess's tag reading
                jpeg_fancy_upsampling=True,  # libjpeg's chroma upsampling, as in Pillow
            )
            return fn.resize(
                images,
                size=[IMAGE_SIZE, IMAGE_SIZE],
                roi_start=roi_start,
                roi_end=roi_end,
                interp_type=types.INTERP_LINEAR,
                antialias=True,
                dtype=types.UINT8,
            )

        pipe = pipeline()
        try:
            pipe.build()
        except RuntimeError as error:
            if self.device == "gpu":
                raise DaliUnavailable(f"DALI cannot use a GPU here: {_first_line(error)}") from None
            raise
        return pipe

    def __call__(self, images: Sequence[bytes]) -> list[DecodedImage | None]:
        """Each image's DecodedImage (its pixels as close to decode_image's as DALI allows), or None.

        None means: leave this image to vgg.preprocess.decode_image (in the sandbox), which
        decodes it or says what is wrong with it.
        """
        images = [bytes(data) if isinstance(data, (bytearray, memoryview)) else data for data in images]
        plans = [plan(data, resize=self.resize, max_pixels=self._max_pixels) for data in images]
        out: list[DecodedImage | None] = [None] * len(images)
        taken = [i for i, p in enumerate(plans) if p is not None]
        with self._lock:
            for first in range(0, len(taken), self.batch_size):
                chunk = taken[first : first + self.batch_size]
                chunk_plans = [plans[i] for i in chunk]
                decoded = self._run_or_isolate([images[i] for i in chunk], chunk_plans)
                for i, p, pixels in zip(chunk, chunk_plans, decoded):
                    if pixels is not None:
                        out[i] = DecodedImage(oriented(pixels, p.orientation), p.width, p.height)
        return out

    def _run_or_isolate(self, images: list[bytes], plans: list[Plan]) -> list[np.ndarray | None]:
        """The batch's pixels; when DALI fails on the batch, each image alone, None for those it fails on.

        A failed run leaves a DALI pipeline unusable, so each failure builds a new one.
        """
        try:
            return list(self._run(images, plans))
        except RuntimeError:
            self._pipe = self._build()
        if len(images) == 1:
            return [None]
        results = []
        for data, p in zip(images, plans):
            try:
                results.append(self._run([data], [p])[0])
            except RuntimeError:
                self._pipe = self._build()
                results.append(None)
        return results

    def _run(self, images: list[bytes], plans: list[Plan]) -> np.ndarray:
        self._pipe.feed_input("encoded", [np.frombuffer(data, np.uint8) for data in images])
        self._pipe.feed_input("roi_start", [np.array(p.roi_start, np.float32) for p in plans])
        self._pipe.feed_input("roi_end", [np.array(p.roi_end, np.float32) for p in plans])
        (pixels,) = self._pipe.run()
        if self.device == "gpu":
            pixels = pixels.as_cpu()
        return pixels.as_array()

    def close(self) -> None:
        """Frees the pipeline (and its GPU memory)."""
        self._pipe = None


def _crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The displayed region (x0, y0, x1, y1) that "center_crop" keeps: vgg.preprocess._center_crop's box."""
    short, long = min(width, height), max(width, height)
    scaled_long = (long * _CROP_SHORT_SIDE + short // 2) // short
    new_w, new_h = (_CROP_SHORT_SIDE, scaled_long) if width <= height else (scaled_long, _CROP_SHORT_SIDE)
    left, top = (new_w - IMAGE_SIZE) // 2, (new_h - IMAGE_SIZE) // 2
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + IMAGE_SIZE) * sx, (top + IMAGE_SIZE) * sy)


def _corners(box: tuple[float, float, float, float]) -> tuple[tuple[float, float], tuple[float, float]]:
    x0, y0, x1, y1 = box
    return (x0, y0), (x1, y1)


def _stored_point(orientation: int, x: float, y: float, width: int, height: int) -> tuple[float, float]:
    """A point (x, y) of the displayed image -> the same point of the stored one (width x height)."""
    return {
        1: (x, y),
        2: (width - x, y),
        3: (width - x, height - y),
        4: (x, height - y),
        5: (y, x),
        6: (y, height - x),
        7: (width - y, height - x),
        8: (width - y, x),
    }[orientation]


def _clean_jpeg(data: bytes) -> bool:
    """Whether the bytes are an 8-bit Huffman-coded JPEG whose markers are all in place, up to its end marker.

    Walks the marker segments to the frame header and the first scan, then the compressed
    data for markers. Libjpeg behind Pillow stops with an error at a marker that has no
    business in a scan (damaged data), where DALI's decoders carry on and return an image;
    such a file, like one without its end marker, is left to vgg.preprocess, so it gets
    today's "corrupt" or "truncated" row.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    pos, end, sof = 2, len(data), None
    while True:  # the header: segments up to the first scan
        if pos + 4 > end or data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        if marker in _ONE_SHOT_MARKERS:
            pos += 2
            continue
        if marker == _EOI:
            return False
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF_ANY:
            if sof is not None or marker not in _SOF_TAKEN or data[pos + 4 : pos + 5] != b"\x08":
                return False  # a second frame, arithmetic or lossless coding, or 12-bit samples
            sof = marker
        pos += 2 + length
        if marker == _SOS:
            break
    if sof is None:
        return False
    while True:  # the compressed data, and for a progressive JPEG what stands between its scans
        found = _MARKER_IN_SCAN.search(data, pos)
        if found is None:
            return False  # no end marker: cut short
        marker = data[found.start() + 1]
        if marker == _EOI:
            return True
        if sof != 0xC2 or marker not in _BETWEEN_SCANS or found.start() + 4 > end:
            return False
        pos = found.start() + 2 + int.from_bytes(data[found.start() + 2 : found.start() + 4], "big")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
