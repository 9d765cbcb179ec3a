"""Makes test images as bytes: encoded Pillow images, hand-built PNGs, EXIF-tagged files.

Shared by the bad-input corpus (tests/corpus.py) and the preprocessing tests, so that both
build the same kinds of file the same way.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
EXIF_ORIENTATION = 0x0112  # the EXIF tag viewers rotate and flip by
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    """`img` saved in Pillow format `fmt` ("PNG", "JPEG", ...) with its save options."""
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def exif_tagged(img: Image.Image, fmt: str, orientation: int, **kwargs) -> bytes:
    """`img` stored as it is, with an EXIF orientation tag a viewer applies when showing it."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(img, fmt, exif=exif, **kwargs)


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right white.

    Asymmetric under every flip and rotation, so any wrong orientation shows.
    """
    arr = np.full((height, width, 3), 255, np.uint8)
    arr[: height // 2, : width // 2] = RED
    arr[: height // 2, width // 2 :] = GREEN
    arr[height // 2 :, : width // 2] = BLUE
    return Image.fromarray(arr)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body and the CRC over type and body."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which holds no pixel data (a bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def png_rgb48(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG of an (H, W, 3) array (Pillow reads but cannot write these)."""
    height, width, _ = pixels.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )
