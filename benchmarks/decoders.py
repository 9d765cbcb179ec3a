"""JPEG decoders against today's Pillow path: images/s on one pinned core, and the numbers through the model.

    python -m benchmarks.decoders                     # writes benchmarks/results/decoders.{json,txt}
    python -m benchmarks.decoders --weights W         # the numerics with genuine weights

The photos of `benchmarks.decode` (the bundled JPEGs, and 12 MP JPEGs at three noise
levels) and the bench's 640×480 JPEGs (`benchmarks.images`), each decoded to the model's
224×224 input (resize squash) by:

- pil: `vgg.preprocess.decode_image` as the job runs it (Pillow in draft mode, then the
  bilinear resize); every other figure is compared with it;
- simplejpeg: simplejpeg (libjpeg-turbo's TurboJPEG API) at exactly Pillow's draft scale
  (1, 1/2, 1/4 or 1/8), then the same resize;
- simplejpeg-n/8: simplejpeg at the smallest scale n/8 whose size is not below 224×224
  (its `min_height`/`min_width`), then the same resize;
- turbojpeg: PyTurboJPEG (the system's libturbojpeg) at Pillow's draft scale, then the
  same resize;
- pil-box: Pillow in draft mode, then a box-filter resize (a cheaper filter).

Where simplejpeg, PyTurboJPEG or libturbojpeg is missing, its candidates are skipped, and
the table says so (`pip install simplejpeg PyTurboJPEG`; PyTurboJPEG 1.x for the
libturbojpeg 2.x of Debian 12's libturbojpeg0). The candidates other than pil run in a
shell that does decode_image's other steps too (Pillow's header parse through
`vgg.preprocess.open_image`, the pixel-count check, the EXIF orientation through
`upright`), so the rates compare like with like. Speed: images/s of one thread pinned to
one core, the fastest of --passes passes over each group (as `benchmarks.bench` measures
d); the decoders take turns within a pass. Numerics against pil, over every photo: the
224×224 input's max and mean absolute difference, and through VGG16 the share of photos
whose top-1 class is the same and the min and median fc7 cosine. A decoder keeps the
numbers when top-1 is equal on at least 99% of the photos and every fc7 cosine is at least
0.999; it is worth adopting when it also beats pil by MIN_SPEEDUP (geometric mean over the
groups), a margin a rerun on a busy machine does not take back. Weights are synthesized
(UNTRAINED) unless --weights is given: random filters make every photo look alike, so the
model's figures are weak evidence then; the pixel differences are not.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks import decode, images, results, tables

TOP1_EQUAL_MIN = 0.99  # share of photos whose top-1 class must stay the same
FC7_COSINE_MIN = 0.999  # every photo's fc7 cosine to today's path
MIN_SPEEDUP = 1.05  # over pil, geometric mean over the groups
MIN_DECODES = 32  # per decoder, group and pass: a group of one photo is timed 32 times over
BASELINE = "pil"
SIZE_640 = (640, 480)

Decoder = Callable[[bytes], np.ndarray]


def _pil(data: bytes) -> np.ndarray:
    from vgg.preprocess import decode_image

    return decode_image(data).pixels


def _shell(decode_rgb: Callable, resample: str = "BILINEAR") -> Decoder:
    """A candidate: decode_image's steps around decode_rgb(opened image, data) -> an "RGB" image.

    The opened image has its draft scale set (from the header alone) and its size checked.
    """
    from PIL import Image

    from vgg.architecture import IMAGE_SIZE
    from vgg.preprocess import MAX_PIXELS, open_image, upright

    filter_ = getattr(Image.Resampling, resample)

    def run(data: bytes) -> np.ndarray:
        with open_image(data) as img:
            if img.format != "JPEG" or img.mode != "RGB" or img.width * img.height > MAX_PIXELS:
                raise ValueError(f"{img.format} {img.mode} {img.size}: not a plain JPEG within max_pixels")
            img.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))
            rgb = decode_rgb(img, data)
            if rgb is not img:
                rgb.info.update(img.info)  # the EXIF, so that upright reads the same tag
            out = upright(rgb).resize((IMAGE_SIZE, IMAGE_SIZE), filter_)
        return np.asarray(out, dtype=np.uint8)

    return run


def _pillow_load(img, data: bytes):
    img.load()
    return img


def candidates() -> dict[str, tuple[Decoder | None, str]]:
    """name -> (decode function, or None where it cannot run here; what it is, or why not)."""
    from PIL import Image

    from vgg.architecture import IMAGE_SIZE

    found: dict[str, tuple[Decoder | None, str]] = {
        "pil": (_pil, "decode_image: Pillow draft + bilinear (the job's path)"),
    }
    try:
        import simplejpeg
    except ImportError as error:
        missing = f"simplejpeg unavailable: {error}"
        found["simplejpeg"] = found["simplejpeg-n/8"] = (None, missing)
    else:

        def at_pillow_scale(img, data: bytes):
            width, height = img.size  # the draft's size: asking for at least it gets exactly its scale
            return Image.fromarray(simplejpeg.decode_jpeg(data, "RGB", min_height=height, min_width=width))

        def smallest_scale(img, data: bytes):
            return Image.fromarray(
                simplejpeg.decode_jpeg(data, "RGB", min_height=IMAGE_SIZE, min_width=IMAGE_SIZE)
            )

        found["simplejpeg"] = (_shell(at_pillow_scale), "simplejpeg at Pillow's draft scale + bilinear")
        found["simplejpeg-n/8"] = (
            _shell(smallest_scale),
            "simplejpeg at the smallest n/8 scale >= 224 + bilinear",
        )
    try:
        import turbojpeg

        turbo = turbojpeg.TurboJPEG()
    except (ImportError, OSError, RuntimeError) as error:
        found["turbojpeg"] = (None, f"PyTurboJPEG unavailable: {str(error).splitlines()[0]}")
    else:

        def turbo_scaled(img, data: bytes):
            denominator = round(turbo.decode_header(data)[0] / img.width)  # Pillow's draft scale
            return Image.fromarray(
                turbo.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, denominator))
            )

        found["turbojpeg"] = (_shell(turbo_scaled), "PyTurboJPEG at Pillow's draft scale + bilinear")
    found["pil-box"] = (_shell(_pillow_load, "BOX"), "Pillow draft + box filter (a cheaper resize)")
    return found


def inputs(scratch: str, count_640: int) -> list[dict]:
    """benchmarks.decode's JPEGs (its PNG is no JPEG) and count_640 of the bench's 640×480 JPEGs."""
    entries = [
        e for e in decode.inputs(os.path.join(scratch, "decode"), decode.NOISE) if e["file"].endswith(".jpg")
    ]
    for entry in entries:
        if entry["group"] == "bundled photo":
            entry["group"] = "bundled photo (JPEG)"
    folder = os.path.join(scratch, "images", "640x480")
    for path in images.make_images(folder, SIZE_640, count_640):
        entries.append(
            {"group": "640×480 JPEG q90", "file": path, "pixels": SIZE_640, "bytes": os.path.getsize(path)}
        )
    return entries


def rates(entries: list[dict], blobs: list[bytes], decoders: dict, passes: int) -> list[dict]:
    """Per group: images/s of each decoder, the fastest of `passes` passes, one thread pinned to one core.

    The decoders take turns within each pass, in an order that rotates from pass to pass, so a
    busy spell on a shared machine slows them alike; a small group is decoded several times
    over in each pass (MIN_DECODES), so that one pass is not a few milliseconds.
    """
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault(entry["group"], []).append(i)
    names = list(decoders)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(before)})
    try:
        rows = []
        for group, members in groups.items():
            work = members * math.ceil(MIN_DECODES / len(members))
            best = dict.fromkeys(names, float("inf"))
            for decode_fn in decoders.values():
                decode_fn(blobs[members[0]])  # warm-up
            for turn in range(passes):
                for name in names[turn % len(names) :] + names[: turn % len(names)]:
                    decode_fn = decoders[name]
                    start = time.perf_counter()
                    for i in work:
                        decode_fn(blobs[i])
                    best[name] = min(best[name], time.perf_counter() - start)
            rows.append(
                {
                    "input": group,
                    "files": len(members),
                    "images_per_s": {name: len(work) / seconds for name, seconds in best.items()},
                }
            )
    finally:
        os.sched_setaffinity(0, before)
    return rows


def model_outputs(weights: str, batches: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Top-1 class and fc7 per photo, for each decoder's (N, 224, 224, 3) inputs.

    Each distinct input runs through the model once: a photo that two decoders turn into
    byte-identical inputs gets the same outputs for both, as the same model would give.
    """
    from vgg.inference import Predictor

    keys = {
        name: [hashlib.sha256(p.tobytes()).hexdigest() for p in pixels] for name, pixels in batches.items()
    }
    distinct: dict[str, np.ndarray] = {}
    for name, pixels in batches.items():
        for key, image in zip(keys[name], pixels):
            distinct.setdefault(key, image)
    predictor = Predictor(weights)
    order = list(distinct)
    top1, fc7 = {}, {}
    for start in range(0, len(order), 8):
        chunk = order[start : start + 8]
        probs, features = predictor(np.stack([distinct[key] for key in chunk]))
        for key, p, f in zip(chunk, probs, features):
            top1[key], fc7[key] = int(p.argmax()), f
    return {
        name: (np.array([top1[k] for k in ks]), np.stack([fc7[k] for k in ks])) for name, ks in keys.items()
    }


def numerics(batches: dict[str, np.ndarray], outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Per decoder, against BASELINE: pixel differences, top-1 agreement, fc7 cosines, and the verdict."""
    base_pixels = batches[BASELINE].astype(np.int16)
    base_top1, base_fc7 = outputs[BASELINE]
    out = {}
    for name, pixels in batches.items():
        diff = np.abs(pixels.astype(np.int16) - base_pixels)
        top1, fc7 = outputs[name]
        cosines = np.sum(fc7 * base_fc7, axis=1) / (
            np.linalg.norm(fc7, axis=1) * np.linalg.norm(base_fc7, axis=1)
        )
        top1_equal = float(np.mean(top1 == base_top1))
        out[name] = {
            "photos": len(pixels),
            "identical_pixels": float(np.mean(diff.reshape(len(diff), -1).max(axis=1) == 0)),
            "pixel_diff_max": int(diff.max()),
            "pixel_diff_mean": float(diff.mean()),
            "top1_equal": top1_equal,
            "fc7_cosine_min": float(cosines.min()),
            "fc7_cosine_median": float(np.median(cosines)),
            "keeps_numbers": top1_equal >= TOP1_EQUAL_MIN and float(cosines.min()) >= FC7_COSINE_MIN,
        }
    out[BASELINE]["distinct_top1_classes"] = len(set(base_top1.tolist()))
    return out


def speedups(rows: list[dict]) -> dict[str, float]:
    """Each decoder's images/s over the baseline's, the geometric mean over the groups."""
    names = rows[0]["images_per_s"]
    return {
        name: statistics.geometric_mean(r["images_per_s"][name] / r["images_per_s"][BASELINE] for r in rows)
        for name in names
    }


def verdict(result: dict) -> str:
    """The decoder to use: the fastest that keeps the numbers and beats pil by MIN_SPEEDUP, else pil."""
    worth = [
        n
        for n, v in result["numerics"].items()
        if v["keeps_numbers"] and result["speedup"][n] >= MIN_SPEEDUP and n != BASELINE
    ]
    return max(worth, key=lambda n: result["speedup"][n]) if worth else BASELINE


NUMERIC_HEAD = ("decoder", "identical", "|Δ| max", "|Δ| mean", "top-1 equal", "fc7 cos min", "fc7 cos median",
                "keeps")  # fmt: skip


def _numeric_row(name: str, v: dict) -> tuple[str, ...]:
    return (
        name,
        f"{v['identical_pixels']:.3f}",
        str(v["pixel_diff_max"]),
        f"{v['pixel_diff_mean']:.3f}",
        f"{v['top1_equal']:.3f}",
        f"{v['fc7_cosine_min']:.5f}",
        f"{v['fc7_cosine_median']:.5f}",
        "yes" if v["keeps_numbers"] else "no",
    )


def table(result: dict, markdown: bool = False) -> str:
    """The printed table (or, with markdown, the docs' tables) of a decoders.json."""
    names = list(result["speedup"])
    w = result["weights"]
    trained = "UNTRAINED (synthesized random numbers)" if w["untrained"] else "trained"
    speed_rows = [
        (r["input"], str(r["files"]), *(f"{r['images_per_s'][n]:.1f}" for n in names)) for r in result["rows"]
    ]
    speed_rows.append(
        ("speed-up over pil (geometric mean)", "", *(f"{result['speedup'][n]:.3f}" for n in names))
    )
    num = result["numerics"]
    numeric_rows = [_numeric_row(name, num[name]) for name in names]
    n_photos = num[BASELINE]["photos"]
    lines = [
        f"JPEG decoders, resize=squash, one thread pinned to one core, fastest of {result['passes']} passes: "
        "images/s",
        "",
        tables.table(("input", "files", *names), speed_rows, markdown=markdown),
        "",
        f"numbers against pil over {n_photos} photos (224×224 input; VGG16 with weights {w['name']}, "
        f"sha256 {w['sha256'][:12]}…, {trained}; {num[BASELINE]['distinct_top1_classes']} distinct "
        "top-1 classes under pil)",
        "",
        tables.table(NUMERIC_HEAD, numeric_rows, markdown=markdown),
        "",
        f"keeps the numbers: top-1 equal on >= {TOP1_EQUAL_MIN:.0%} of the photos and every fc7 cosine "
        f">= {FC7_COSINE_MIN}. Worth adopting: keeps them and is >= {MIN_SPEEDUP:.2f}x pil's speed; "
        f"the one to use: {result['use']}",
    ]
    lines += [f"not measured: {n}: {why}" for n, why in result["unavailable"].items()]
    if w["untrained"]:
        lines += ["", UNTRAINED_NOTE]
    return "\n".join([results.machine_line(result["machine"]), *([""] if markdown else []), *lines])


UNTRAINED_NOTE = (
    "NOTE: UNTRAINED weights: random filters make every photo look alike, so top-1 and fc7 cosine "
    "say little here; the pixel differences hold whatever the weights. Run with --weights and the "
    "genuine VGG16 weights for the model's figures."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decoders", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/bench", help="scratch folder: generated images, weights")
    parser.add_argument("--results", default=results.RESULTS, help="where decoders.json and decoders.txt go")
    parser.add_argument("--weights", help="VGG16 weights for the numerics (default: synthesized, UNTRAINED)")
    parser.add_argument("--passes", type=int, default=5, help="passes over each group; the fastest is kept")
    parser.add_argument("--images", type=int, default=48, help="640×480 JPEGs (the bench's)")
    args = parser.parse_args(argv)
    if args.passes < 1 or args.images < 1:
        parser.error(f"--passes and --images must be at least 1. Received: {args.passes}, {args.images}")
    from benchmarks.bench import prepare_weights

    weights, _, weights_info = prepare_weights(args.out, args.weights, for_peers=False)
    found = candidates()
    decoders = {name: fn for name, (fn, _) in found.items() if fn is not None}
    entries = inputs(args.out, args.images)
    blobs = []
    for entry in entries:
        with open(entry["file"], "rb") as handle:
            blobs.append(handle.read())
    batches = {name: np.stack([fn(blob) for blob in blobs]) for name, fn in decoders.items()}
    rows = rates(entries, blobs, decoders, args.passes)
    outputs = model_outputs(weights, batches)
    from vgg.weights import describe_weights

    info = describe_weights(weights)
    result = {
        **results.stamp("decoders", "benchmarks.decoders", argv),
        "passes": args.passes,
        "weights": {**weights_info, "name": info.name},
        "decoders": {name: why for name, (_, why) in found.items() if name in decoders},
        "unavailable": {name: why for name, (fn, why) in found.items() if fn is None},
        "files": [{**e, "file": results.relative(e["file"])} for e in entries],
        "rows": rows,
        "speedup": speedups(rows),
        "numerics": numerics(batches, outputs),
    }
    result["use"] = verdict(result)
    text = table(result)
    print(text)
    paths = results.write(result, text, args.results, "decoders")
    print("wrote " + ", ".join(results.relative(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
