"""Decode + preprocess cost per image on one pinned core, draft mode on and off: the capacity plan's table.

    python -m benchmarks.decode                       # writes benchmarks/results/decode.{json,txt}

`vgg.preprocess.decode_image` (resize squash) on one thread pinned to one core, best of
--repeats runs per file (noise on a shared machine only ever adds time), on: the bundled
photos (samples/), and 12 MP (4032×3024) JPEGs made from each of them at three noise
levels (smooth, light and heavy noise), since a JPEG's decoding cost follows its bytes
more than its pixels.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks import images, results, tables
from benchmarks.tables import span

TWELVE_MP = (4032, 3024)
NOISE = {"smooth": 0.0, "light noise": 4.0, "heavy noise": 12.0}  # sigma, in levels of 255


def best_decode_ms(data: bytes, draft: bool, repeats: int) -> float:
    """Fastest of `repeats` decodes (after one warm-up), in ms."""
    from vgg.preprocess import decode_image

    decode_image(data, resize="squash", draft=draft)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        decode_image(data, resize="squash", draft=draft)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def inputs(scratch: str, levels: dict[str, float]) -> list[dict]:
    """Every input measured: group (a table row), file, size in bytes and pixels."""
    from PIL import Image

    found = []
    for photo in images.sample_photos():
        with Image.open(photo) as img:
            pixels = img.size
        group = (
            "bundled photo" if max(pixels) < 1000 else f"{os.path.basename(photo)} {pixels[0]}×{pixels[1]}"
        )
        found.append({"group": group, "file": photo, "pixels": pixels})
    for level, sigma in levels.items():
        for i, photo in enumerate(images.sample_photos()):
            name = f"{os.path.splitext(os.path.basename(photo))[0]}-{level.replace(' ', '_')}.jpg"
            path = images.make_noisy(os.path.join(scratch, name), photo, TWELVE_MP, sigma, seed=i)
            found.append({"group": f"12 MP JPEG q90, {level}", "file": path, "pixels": TWELVE_MP})
    for entry in found:
        entry["bytes"] = os.path.getsize(entry["file"])
    return found


def measure(entries: list[dict], repeats: int) -> list[dict]:
    """Adds draft_ms and full_ms to each entry, on one core of this process's CPU set.

    Pinned so that a decode cannot borrow a second core (libjpeg itself is single-threaded,
    but the numbers stay per core however the OS schedules); the previous set is restored.
    """
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(before)})
    try:
        for entry in entries:
            with open(entry["file"], "rb") as handle:
                data = handle.read()
            entry["draft_ms"] = best_decode_ms(data, True, repeats)
            entry["full_ms"] = best_decode_ms(data, False, repeats)
    finally:
        os.sched_setaffinity(0, before)
    return entries


def rows(entries: list[dict]) -> list[dict]:
    """One row per group: file sizes and each mode's range (min-max over the group's files)."""
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        groups.setdefault(entry["group"], []).append(entry)
    out = []
    for group, members in groups.items():
        sizes = [m["bytes"] / 1e6 for m in members]
        out.append(
            {
                "input": group,
                "files": len(members),
                "mb": [min(sizes), max(sizes)],
                "draft_ms": [min(m["draft_ms"] for m in members), max(m["draft_ms"] for m in members)],
                "full_ms": [min(m["full_ms"] for m in members), max(m["full_ms"] for m in members)],
            }
        )
    return out


def table(result: dict, markdown: bool = False) -> str:
    """The printed table (or, with markdown, the docs' table) of a decode.json."""
    head = ("input", "files", "MB", "draft=True ms", "draft=False ms")
    body = [
        (r["input"], str(r["files"]), span(r["mb"], 2), span(r["draft_ms"], 1), span(r["full_ms"], 1))
        for r in result["rows"]
    ]
    intro = f"decode_image, resize=squash, one thread pinned to one core, best of {result['repeats']} runs"
    lines = [intro, "", tables.table(head, body, markdown=markdown)]
    return "\n".join([results.machine_line(result["machine"]), *([""] if markdown else []), *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/bench", help="scratch folder for the generated images")
    parser.add_argument("--results", default=results.RESULTS, help="where decode.json and decode.txt go")
    parser.add_argument("--repeats", type=int, default=5, help="runs per file; the fastest is kept")
    parser.add_argument("--quick", action="store_true", help="only the smooth 12 MP level (a check)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1. Received: {args.repeats}")
    levels = {"smooth": NOISE["smooth"]} if args.quick else NOISE
    entries = inputs(os.path.join(args.out, "decode"), levels)
    measure(entries, args.repeats)
    result = {
        **results.stamp("decode", "benchmarks.decode", argv),
        "repeats": args.repeats,
        "files": [{**e, "file": results.relative(e["file"])} for e in entries],
        "rows": rows(entries),
    }
    text = table(result)
    print(text)
    paths = results.write(result, text, args.results, "decode")
    print("wrote " + ", ".join(results.relative(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
