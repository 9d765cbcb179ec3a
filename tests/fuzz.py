"""Fuzzing the decoder and the job with byte-mutated copies of real photos (fixed seed).

    python -m tests.fuzz --count 1000 --seed 0               # the documented full run
    python -m tests.fuzz --count 1000 --seed 0 --pipeline 1000 --keep /tmp/fuzz
    python -m tests.fuzz --isolation_cost                    # decode cost of --decode_isolation

Each mutant is decoded in an `IsolatedDecoder` child process (as the job does by default),
so a crash or a hang in Pillow is counted instead of ending the run. Outcomes: a decoded
image ("prediction"), an ImageError by error_type, or a contained "crashed"/"timeout"
or unexpected exception ("decode_error"). `--pipeline N` also runs the first N mutants
through the job's transforms (TestPipeline, fake model) and checks each ends in exactly
one row. Exits 1 on any crash, timeout, unexpected exception or unaccounted input.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import json
import pathlib
import statistics
import struct
import sys
import tempfile
import time

import numpy as np
from PIL import Image

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "samples"
MUTATIONS = (
    "bitflip",
    "overwrite",
    "truncate",
    "header",
    "integer",
    "duplicate",
    "delete",
    "insert",
    "splice",
)


def base_files() -> dict[str, bytes]:
    """The real photos mutants are made from: the samples, and small re-encodes in every allowed format."""
    files = {p.name: p.read_bytes() for p in sorted(SAMPLES.iterdir()) if p.suffix in (".jpg", ".png")}
    with Image.open(SAMPLES / "rocket.jpg") as photo:
        small = photo.convert("RGB").resize((96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6
    encodings = {
        "small.png": ("PNG", {}),
        "small_rgba.png": ("PNG", {"_mode": "RGBA"}),
        "small.gif": ("GIF", {}),
        "small.webp": ("WEBP", {"quality": 80}),
        "small.tif": ("TIFF", {"compression": "tiff_lzw"}),
        "small.bmp": ("BMP", {}),
        "small_progressive.jpg": ("JPEG", {"progressive": True, "quality": 85}),
        "small_exif.jpg": ("JPEG", {"exif": exif.tobytes(), "quality": 85}),
        "small_cmyk.jpg": ("JPEG", {"_mode": "CMYK"}),
    }
    for name, (fmt, options) in encodings.items():
        save_kwargs = dict(options)
        image = small.convert(save_kwargs.pop("_mode", "RGB"))
        buffer = io.BytesIO()
        image.save(buffer, fmt, **save_kwargs)
        files[name] = buffer.getvalue()
    return files


def mutate(data: bytes, other: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of `data` (`other` is a second photo for splicing)."""
    kind = MUTATIONS[rng.integers(len(MUTATIONS))]
    out = bytearray(data)
    size = len(out)
    if kind == "bitflip":
        for at in rng.integers(0, size, rng.integers(1, 17)):
            out[at] ^= 1 << int(rng.integers(8))
    elif kind == "overwrite":
        for at in rng.integers(0, size, rng.integers(1, 9)):
            out[at] = int(rng.choice([0x00, 0xFF, 0x7F, 0x80, int(rng.integers(256))]))
    elif kind == "truncate":
        out = out[: int(rng.integers(0, size))]
    elif kind == "header":  # headers hold sizes, counts and offsets: the interesting bytes
        for at in rng.integers(0, min(size, 512), rng.integers(1, 5)):
            out[at] = int(rng.integers(256))
    elif kind == "integer":  # an extreme 16/32-bit value where a size or offset may be
        at = int(rng.integers(0, max(1, min(size, 1024) - 4)))
        value = int(rng.choice([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000]))
        fmt = str(rng.choice([">I", "<I", ">H", "<H"]))
        packed = struct.pack(fmt, value & (0xFFFF if fmt.endswith("H") else 0xFFFFFFFF))
        out[at : at + len(packed)] = packed
    elif kind in ("duplicate", "delete"):
        start = int(rng.integers(0, size))
        end = min(size, start + int(rng.integers(1, 4097)))
        out = out[:end] + out[start:end] + out[end:] if kind == "duplicate" else out[:start] + out[end:]
    elif kind == "insert":
        at = int(rng.integers(0, size))
        out[at:at] = rng.integers(0, 256, int(rng.integers(1, 257)), dtype=np.uint8).tobytes()
    else:  # splice: the head of one photo, the tail of another
        cut = int(rng.integers(0, size))
        out = out[:cut] + other[int(rng.integers(0, len(other))) :]
    return kind, bytes(out)


def mutants(count: int, seed: int):
    """Yields (name, base, mutation, bytes) for `count` mutants, the same for the same seed."""
    rng = np.random.default_rng(seed)
    bases = base_files()
    names = sorted(bases)
    for index in range(count):
        base = names[index % len(names)]
        other = bases[names[int(rng.integers(len(names)))]]
        kind, data = mutate(bases[base], other, rng)
        yield f"fuzz-{index:05d}-{kind}-{base}", base, kind, data


@dataclasses.dataclass
class Report:
    tried: int = 0
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    by_mutation: dict = dataclasses.field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    findings: list = dataclasses.field(default_factory=list)  # crashes, hangs, unexpected exceptions
    seconds: float = 0.0

    @property
    def crashes(self) -> int:
        return self.outcomes["decode/crashed"] + self.outcomes["decode/timeout"]


def fuzz_decode(count: int, seed: int, *, timeout_s: float = 30.0) -> Report:
    """Decodes every mutant in an isolated child; counts outcomes."""
    from vgg.preprocess import ImageError
    from vgg.sandbox import DecoderCrashed, IsolatedDecoder

    report = Report()
    decoder = IsolatedDecoder(timeout_s=timeout_s)
    start = time.monotonic()
    try:
        for name, _, kind, data in mutants(count, seed):
            try:
                decoder(data)
                outcome = "prediction"
            except ImageError as error:
                outcome = f"decode/{error.error_type}"
            except DecoderCrashed as error:
                outcome = f"decode/{error.error_type}"
                report.findings.append((name, str(error)))
            except Exception as error:
                outcome = "decode/decode_error"
                report.findings.append((name, f"{type(error).__name__}: {error}"))
            report.tried += 1
            report.outcomes[outcome] += 1
            report.by_mutation[kind][outcome] += 1
    finally:
        decoder.close()
    report.seconds = time.monotonic() - start
    return report


def fuzz_pipeline(count: int, seed: int, folder: pathlib.Path) -> tuple[int, int, int]:
    """The first `count` mutants as files through the job's transforms; (inputs, predictions, errors).

    Raises:
        AssertionError: an input is missing from the output or in it twice.
    """
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline.job.decode import DecodeConfig
    from pipeline.job.label import LabelImages
    from pipeline.job.read.files import ReadImages
    from tests.pipeline.fakes import FakeHandler

    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for name, _, _, data in mutants(count, seed):
        (folder / name).write_bytes(data)
        uris.append(str(folder / name))
    rows = folder / "rows.jsonl"
    with TestPipeline() as p:
        read = p | beam.Create(uris) | ReadImages()
        out = read["images"] | LabelImages(
            FakeHandler(max_batch_size=16), DecodeConfig(), top_k=5, embeddings=False
        )
        errors = (read["errors"], out["errors"]) | "AllErrors" >> beam.Flatten()
        (
            (
                out["predictions"] | "P" >> beam.Map(lambda r: ("prediction", r["uri"])),
                errors | "E" >> beam.Map(lambda r: (f"{r['stage']}/{r['error_type']}", r["uri"])),
            )
            | beam.Flatten()
            | beam.Map(json.dumps)
            | beam.io.WriteToText(str(rows), shard_name_template="")
        )
    found = [json.loads(line) for line in rows.read_text().splitlines()]
    seen = collections.Counter(uri for _, uri in found)
    assert sorted(seen) == sorted(uris) and set(seen.values()) == {1}, "an input lost or duplicated"
    predictions = sum(outcome == "prediction" for outcome, _ in found)
    return len(uris), predictions, len(found) - predictions


def isolation_cost(repeats: int = 15) -> dict[str, float]:
    """ms per image to decode ~50 real photos in-process vs. in an IsolatedDecoder (min of repeats)."""
    from vgg.preprocess import decode_image
    from vgg.sandbox import IsolatedDecoder

    photos = []
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix not in (".jpg", ".png"):
            continue
        photos.append(path.read_bytes())
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        for quality in (60, 70, 75, 80, 85, 90, 95):  # the same photos as phones' JPEGs
            buffer = io.BytesIO()
            rgb.save(buffer, "JPEG", quality=quality)
            photos.append(buffer.getvalue())
    isolated = IsolatedDecoder()
    isolated(photos[0])  # start the child outside the timing
    times = {"in_process": [], "subprocess": []}
    try:
        for _ in range(repeats):  # interleaved, so that load on the machine hits both alike
            for mode, decode in (("in_process", decode_image), ("subprocess", isolated)):
                start = time.perf_counter()
                for data in photos:
                    decode(data)
                times[mode].append((time.perf_counter() - start) * 1000 / len(photos))
    finally:
        isolated.close()
    result = {f"{mode}_ms": round(min(t), 3) for mode, t in times.items()}
    result["median_overhead_ms"] = round(
        statistics.median(times["subprocess"]) - statistics.median(times["in_process"]), 3
    )
    result["photos"] = len(photos)
    result["mean_bytes"] = int(np.mean([len(p) for p in photos]))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="mutants to decode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipeline", type=int, default=30, help="of them, how many through the job")
    parser.add_argument("--keep", default=None, help="folder for the pipeline's mutant files")
    parser.add_argument("--timeout_s", type=float, default=30.0, help="a decode slower than this is a hang")
    parser.add_argument("--isolation_cost", action="store_true", help="only measure decode isolation")
    args = parser.parse_args(argv)
    if args.isolation_cost:
        print(json.dumps(isolation_cost()))
        return 0
    report = fuzz_decode(args.count, args.seed, timeout_s=args.timeout_s)
    print(f"decode: {report.tried} mutants (seed {args.seed}) in {report.seconds:.1f} s")
    for outcome, n in sorted(report.outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {outcome:<26} {n}")
    print(
        f"  crashes/hangs: {report.crashes}; unexpected exceptions: {report.outcomes['decode/decode_error']}"
    )
    for name, what in report.findings[:20]:
        print(f"  FINDING {name}: {what}")
    accounted = True
    if args.pipeline:
        with tempfile.TemporaryDirectory() as scratch:
            folder = pathlib.Path(args.keep or scratch)
            start = time.monotonic()
            try:
                inputs, predictions, errors = fuzz_pipeline(min(args.pipeline, args.count), args.seed, folder)
            except AssertionError as error:
                print(f"pipeline: FAILED: {error}")
                accounted = False
            else:
                print(
                    f"pipeline: {inputs} mutants -> {predictions} predictions + {errors} errors rows "
                    f"= {predictions + errors} ({100 * (predictions + errors) / inputs:.0f}% accounted for) "
                    f"in {time.monotonic() - start:.1f} s"
                )
    return 0 if accounted and not report.findings else 1


if __name__ == "__main__":
    sys.exit(main())
