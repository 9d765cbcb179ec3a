"""The bad-input corpus: every kind of file a real image bucket holds, generated, with expected outcomes.

Nothing here is a hand-picked file: every kind is made from the bundled sample photos or
from scratch, deterministically (fixed seeds), so the corpus can be rebuilt anywhere.

    python -m tests.corpus OUTDIR      # writes the files and prints name -> expected outcome

Expected outcomes are a prediction (with the size as displayed, and for some kinds the
colour the decoded top-left pixel must have) or an errors row (stage, error_type). Two
kinds need a fault the test injects, because the bytes alone cannot express it:
"permission" (unreadable; injected, since root reads any file) and "vanish" (deleted
between matching and reading); see tests/pipeline/faults.py.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import sys
import zipfile

import numpy as np
from PIL import Image

from tests.images import BLUE, GREEN, RED, WHITE, encode, exif_tagged, png_header_only, png_rgb48, quadrants

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "samples"
# Pillow's default limit, which vgg.preprocess.MAX_PIXELS copies.
PILLOW_LIMIT = 89_478_485


@dataclasses.dataclass(frozen=True)
class Expected:
    """What the job must do with one corpus file.

    Attributes:
        stage: None for a prediction, else the errors row's stage.
        error_type: The errors row's error_type (None for a prediction).
        size: (width, height) as displayed, for a prediction.
        top_left: RGB the decoded top-left pixel must have (within 8 levels), if checked.
        fault: A read fault the test must inject for this file ("permission", "vanish").
        note: Why this outcome.
    """

    stage: str | None
    error_type: str | None
    size: tuple[int, int] | None = None
    top_left: tuple[int, int, int] | None = None
    fault: str | None = None
    note: str = ""

    @property
    def outcome(self) -> str:
        return "prediction" if self.stage is None else f"{self.stage}/{self.error_type}"


def _ok(size, note, top_left=None, fault=None) -> Expected:
    return Expected(None, None, size=size, top_left=top_left, fault=fault, note=note)


def _bad(error_type, note, stage="decode", fault=None) -> Expected:
    return Expected(stage, error_type, fault=fault, note=note)


def with_orientation(displayed: Image.Image, orientation: int) -> bytes:
    """A JPEG stored so that a viewer applying EXIF `orientation` shows `displayed`."""
    # The inverse of what a viewer does for each tag (viewer: 3 -> 180, 6 -> 270, 8 -> 90).
    stored = displayed.transpose(
        {
            3: Image.Transpose.ROTATE_180,
            6: Image.Transpose.ROTATE_90,
            8: Image.Transpose.ROTATE_270,
        }[orientation]
    )
    return exif_tagged(stored, "JPEG", orientation, quality=95)


def large_photo(width: int = 8000, height: int = 6000) -> bytes:
    """A real photo scaled up to width x height (48 MP), as a phone's full-size JPEG."""
    with Image.open(SAMPLES / "china.jpg") as photo:
        big = photo.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return encode(big, "JPEG", quality=85)


def random_bytes(size: int, seed: int) -> bytes:
    data = bytearray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    data[:4] = b"\x00\x01\x02\x03"  # no image signature by chance
    return bytes(data)


def build_corpus(*, large: bool = True) -> dict[str, tuple[bytes, Expected]]:
    """Every kind: file name -> (bytes, expected outcome). `large=False` skips the 48 MP photo."""
    coffee = (SAMPLES / "coffee.jpg").read_bytes()  # 600x400 JPEG
    cat = (SAMPLES / "chelsea.png").read_bytes()  # 451x300 PNG
    photo = Image.open(SAMPLES / "rocket.jpg").convert("RGB").resize((160, 107))
    quads = quadrants()
    bad_crc = bytearray(cat)
    bad_crc[8 + 4 + 4 + 13] ^= 0xFF  # the IHDR chunk's CRC
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    broken_stream = bytearray(encode(noise, "PNG"))
    broken_stream[33 + 8 + 100] ^= 0xFF  # inside the first IDAT's zlib data
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("photo.jpg", coffee[:1000])
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, GREEN, BLUE)]
    pages = [Image.new("RGB", (32, 32), c) for c in (BLUE, RED)]
    la = np.zeros((32, 32, 2), np.uint8)
    la[..., 0], la[16:, :, 1] = 0, 255  # black; top half fully transparent
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[...] = (0, 0, 255, 255)
    rgba[:16, :16] = (255, 0, 0, 128)  # half-transparent red over white: (255, 127, 127)
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(0, (0, 0, 16, 16))  # index 0, declared transparent below
    one_bit = Image.new("1", (32, 32), 1)
    one_bit.paste(0, (16, 0, 32, 32))
    grey16 = Image.fromarray(np.full((32, 32), 32896, np.uint16))  # 32896 / 257 = 128
    rgb48 = np.zeros((24, 32, 3), np.uint16)
    rgb48[...] = (65535, 0, 0)  # 16-bit red
    strip = Image.fromarray(np.tile(np.linspace(0, 255, 5000, dtype=np.uint8)[:, None, None], (1, 1, 3)))

    corpus = {
        # -- not images at all
        "empty.jpg": (b"", _bad("empty", "a zero-byte upload")),
        "text.jpg": (b"just some notes, not a photo\n" * 10, _bad("not_an_image", "text named .jpg")),
        "html.jpg": (
            b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>\n",
            _bad("not_an_image", "an error page saved as .jpg"),
        ),
        "pdf.jpg": (
            b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n%%EOF\n",
            _bad("not_an_image", "a PDF named .jpg"),
        ),
        "svg.jpg": (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
            _bad("not_an_image", "vector graphics (XML): not a raster format Pillow reads"),
        ),
        "zip.jpg": (archive.getvalue(), _bad("not_an_image", "a zip archive named .jpg")),
        "random.jpg": (random_bytes(4096, seed=0), _bad("not_an_image", "4 KiB of random bytes")),
        # -- damaged images
        "half.jpg": (coffee[: len(coffee) // 2], _bad("truncated", "a JPEG cut in half")),
        "half.png": (cat[: len(cat) // 2], _bad("truncated", "a PNG cut in half")),
        "header_only.jpg": (coffee[:100], _bad("truncated", "the first 100 bytes of a JPEG")),
        "bad_crc.png": (bytes(bad_crc), _bad("corrupt", "a PNG whose header checksum is wrong")),
        "broken_stream.png": (bytes(broken_stream), _bad("corrupt", "a PNG with a damaged zlib stream")),
        # -- too large
        "bomb.png": (
            png_header_only(100_000, 100_000),
            _bad("too_large", "header claims 1e10 pixels, 112x Pillow's limit: a decompression bomb"),
        ),
        "bomb_warning_zone.png": (
            png_header_only(10_000, 10_000),
            _bad("too_large", "1e8 pixels: 1.1x Pillow's limit, where Pillow only warns; refused here"),
        ),
        # -- formats outside the allow-list
        "image.ppm": (encode(photo, "PPM"), _bad("unsupported_format", "PPM is not on the allow-list")),
        "image.tga": (encode(photo, "TGA"), _bad("unsupported_format", "TGA is not on the allow-list")),
        "image.pcx": (encode(photo, "PCX"), _bad("unsupported_format", "PCX is not on the allow-list")),
        "image.ico": (
            encode(photo.resize((32, 32)), "ICO", sizes=[(32, 32)]),
            _bad("unsupported_format", "ICO is not on the allow-list"),
        ),
        "image.jp2": (
            encode(photo, "JPEG2000"),
            _bad("unsupported_format", "JPEG 2000 is not on the allow-list"),
        ),
        # -- valid images that need care
        "photo.jpg": (coffee, _ok((600, 400), "a real photo, unchanged")),
        "png_named.jpg": (cat, _ok((451, 300), "a valid PNG named .jpg: the bytes decide, not the name")),
        "photo.webp": (encode(photo, "WEBP", quality=90), _ok((160, 107), "WebP")),
        "photo.bmp": (encode(photo, "BMP"), _ok((160, 107), "BMP")),
        "animated.gif": (
            encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
            _ok((32, 32), "3 frames red, green, blue: the first frame is used", top_left=RED),
        ),
        "multipage.tif": (
            encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]),
            _ok((32, 32), "2 pages blue, red: the first page is used", top_left=BLUE),
        ),
        "exif_3.jpg": (with_orientation(quads, 3), _ok((64, 48), "EXIF orientation 3 (180)", top_left=RED)),
        "exif_6.jpg": (
            with_orientation(quads, 6),
            _ok((64, 48), "EXIF orientation 6 (stored 48x64, shown 64x48)", top_left=RED),
        ),
        "exif_8.jpg": (
            with_orientation(quads, 8),
            _ok((64, 48), "EXIF orientation 8 (stored 48x64, shown 64x48)", top_left=RED),
        ),
        "cmyk.jpg": (
            encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95),
            _ok((32, 32), "a CMYK JPEG (print scan): C=0 M=Y=255 K=0 is red", top_left=RED),
        ),
        "p_transparent.png": (
            encode(palette, "PNG", transparency=0),
            _ok((32, 32), "palette with a transparent index: composited over white", top_left=WHITE),
        ),
        "la.png": (
            encode(Image.fromarray(la, "LA"), "PNG"),
            _ok((32, 32), "grey + alpha, top half transparent: white there", top_left=WHITE),
        ),
        "rgba.png": (
            encode(Image.fromarray(rgba, "RGBA"), "PNG"),
            _ok((32, 32), "half-transparent red over white", top_left=(255, 127, 127)),
        ),
        "mode1.png": (encode(one_bit, "PNG"), _ok((32, 32), "1-bit: left half white", top_left=WHITE)),
        "grey16.png": (
            encode(grey16, "PNG"),
            _ok((32, 32), "16-bit grey (I;16) 32896: scaled to 128", top_left=(128, 128, 128)),
        ),
        "rgb48.png": (png_rgb48(rgb48), _ok((32, 24), "16 bits per channel RGB red", top_left=RED)),
        "tiny_1x1.png": (encode(Image.new("RGB", (1, 1), GREEN), "PNG"), _ok((1, 1), "1x1", top_left=GREEN)),
        "strip_1x5000.png": (encode(strip, "PNG"), _ok((1, 5000), "a 1x5000 strip", top_left=(0, 0, 0))),
        # -- read faults the test injects
        "unreadable.jpg": (coffee, _bad("permission_denied", "no read permission", "read", "permission")),
        "deleted.jpg": (coffee, _bad("not_found", "deleted between matching and reading", "read", "vanish")),
    }
    if large:
        corpus["large_8000x6000.jpg"] = (
            large_photo(),
            _ok((8000, 6000), "48 MP phone-size JPEG: decoded at 1/8 scale (draft), bounded memory"),
        )
    return corpus


def write_corpus(folder: str | pathlib.Path, *, large: bool = True) -> dict[str, Expected]:
    """Writes every kind into `folder`; returns file name -> expected outcome."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, outcome) in build_corpus(large=large).items():
        (folder / name).write_bytes(data)
        expected[name] = outcome
    return expected


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tests.corpus OUTDIR", file=sys.stderr)
        return 2
    expected = write_corpus(argv[0])
    width = max(map(len, expected))
    for name, outcome in sorted(expected.items()):
        fault = f" [inject: {outcome.fault}]" if outcome.fault else ""
        print(f"{name:<{width}}  {outcome.outcome:<26} {outcome.note}{fault}")
    print(f"{len(expected)} files in {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
