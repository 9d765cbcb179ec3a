"""Near-duplicate retrieval: do resized, cropped, recompressed and flipped copies find their original?

    python -m benchmarks.near_duplicates --weights vgg16_weights.npz [--images 'photos/*.jpg' ...]

Indexes the originals' fc7 (exact index, as pipeline.tools.index builds it), makes edited copies
of each original, queries with every copy through pipeline.tools.search (same weights, resize and
precision as the index), and reports recall@1 and recall@5 of finding the original, per
edit and overall, with the weights used (sha256; untrained or not). Every original except
the query's own is a distractor; with few originals, compare with the chance levels printed.
The margin is a copy's cosine to its own original minus its best cosine to any other
original: recall counts wins, the margin says by how much. Untrained (synthesized) weights
say nothing about VGG16's robustness to edits (random filters make every photo look alike:
cosines of about 0.94 between unrelated photos); the genuine weights give the real figure.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import tempfile

import numpy as np
from PIL import Image, ImageOps

from benchmarks import results, tables
from vgg.preprocess import ImageError, load_image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLES = os.path.join(results.REPO, "samples", "*")


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _crop(img: Image.Image, keep: float) -> Image.Image:
    width, height = img.size
    dx, dy = round(width * (1 - keep) / 2), round(height * (1 - keep) / 2)
    return img.crop((dx, dy, width - dx, height - dy))


# Each edit: original RGB image -> encoded bytes of the copy. Lossless PNG except where
# compression is the edit, so each copy differs from its original by one thing only.
EDITS = {
    "resized to 50%": lambda img: _png(
        img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS)
    ),
    "cropped to the central 80%": lambda img: _png(_crop(img, 0.8)),
    "recompressed as JPEG q=20": lambda img: _jpeg(img, 20),
    "flipped left-right": lambda img: _png(ImageOps.mirror(img)),
}


def originals(patterns: list[str]) -> list[str]:
    """Files matching the patterns that decode as images, sorted."""
    found = []
    for path in sorted({p for pattern in patterns for p in glob.glob(pattern)}):
        try:
            load_image(path)
        except (ImageError, OSError):
            continue
        found.append(os.path.abspath(path))
    return found


def measure(weights: str, paths: list[str], resize: str) -> dict:
    """Indexes the originals, queries with each edit's copies; recall, cosines and margins per edit."""
    from pipeline.contract import image_id
    from pipeline.tools.index import ArrayEmbeddings, build_index
    from pipeline.tools.search import Searcher, embed_images
    from vgg.inference import Predictor

    predictor = Predictor(weights)
    info = predictor.weights
    provenance = {
        "weights_name": info.name,
        "weights_sha256": info.sha256,
        "weights_untrained": str(info.untrained).lower(),
        "resize": resize,
        "precision": predictor.precision,
    }
    out = {
        "weights": {"name": info.name, "sha256": info.sha256, "untrained": info.untrained},
        "resize": resize,
        "originals": [results.relative(p) for p in paths],
        "edits": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        fc7 = embed_images(predictor, paths, resize=resize)
        build_index(
            ArrayEmbeddings(fc7, [image_id(p) for p in paths], paths), f"{tmp}/index", provenance=provenance
        )
        searcher = Searcher(f"{tmp}/index", predictor=predictor)
        normed = fc7 / np.linalg.norm(fc7, axis=1, keepdims=True)
        others = normed @ normed.T
        np.fill_diagonal(others, np.nan)
        out["chance"] = {"recall@1": 1 / len(paths), "recall@5": min(5, len(paths)) / len(paths)}
        out["cosine_between_originals"] = {"mean": float(np.nanmean(others)), "max": float(np.nanmax(others))}
        for name, edit in EDITS.items():
            copies = []
            for i, path in enumerate(paths):
                with Image.open(path) as img:
                    data = edit(ImageOps.exif_transpose(img).convert("RGB"))
                extension = "jpg" if data.startswith(b"\xff\xd8") else "png"
                copies.append(f"{tmp}/copy-{i}.{extension}")
                with open(copies[-1], "wb") as handle:
                    handle.write(data)
            queries = searcher.embed(copies)
            found = searcher.index.search(queries, k=5)
            ranks = [next((h.rank for h in hits if h.uri == path), None) for hits, path in zip(found, paths)]
            cosines = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ normed.T
            own = np.diag(cosines).copy()
            np.fill_diagonal(cosines, -np.inf)
            margin = own - cosines.max(axis=1)
            out["edits"][name] = {
                "ranks": ranks,
                "recall@1": float(np.mean([r == 1 for r in ranks])),
                "recall@5": float(np.mean([r is not None for r in ranks])),
                "cosine_to_own": float(own.mean()),
                "margin_mean": float(margin.mean()),
                "margin_min": float(margin.min()),
            }
    return out


def table(result: dict, markdown: bool = False) -> str:
    """Recall, cosine and margin per edit, with the chance levels and the weights."""
    w, chance, between = result["weights"], result["chance"], result["cosine_between_originals"]
    rows = [
        (name, f"{e['recall@1']:.3f}", f"{e['recall@5']:.3f}", f"{e['cosine_to_own']:.3f}",
         f"{e['margin_mean']:+.3f}", f"{e['margin_min']:+.3f}", " ".join(str(r) for r in e["ranks"]))
        for name, e in result["edits"].items()
    ]  # fmt: skip
    edits = result["edits"].values()
    n = len(result["originals"])
    rows.append(("all edits", f"{np.mean([e['recall@1'] for e in edits]):.3f}",
                 f"{np.mean([e['recall@5'] for e in edits]):.3f}", "", "", "", ""))  # fmt: skip
    head = ("edit", "recall@1", "recall@5", "cosine to own", "margin mean", "margin min", "ranks")
    trained = "UNTRAINED (synthesized random numbers)" if w["untrained"] else "trained"
    lines = [
        f"weights: {w['name']}, sha256 {w['sha256'][:12]}…, {trained}; resize {result['resize']}",
        f"{n} originals indexed; chance recall@1 {chance['recall@1']:.3f}, "
        f"recall@5 {chance['recall@5']:.3f}; cosine between different originals: "
        f"mean {between['mean']:.3f}, max {between['max']:.3f}",
        "",
        tables.table(head, rows, markdown=markdown),
    ]
    if w["untrained"]:
        lines += ["", UNTRAINED_NOTE]
    return "\n".join([results.machine_line(result["machine"]), *([""] if markdown else []), *lines])


UNTRAINED_NOTE = (
    "NOTE: UNTRAINED weights: these figures describe random filters on this gallery, not VGG16. "
    "With few originals, read the margins and chance levels, not only recall; run with the "
    "genuine weights for the real figure."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="npz or Keras h5 VGG16 weights, or 'imagenet'")
    parser.add_argument("--images", action="append", default=None, help="originals (glob; repeatable)")
    parser.add_argument("--resize", choices=("squash", "center_crop"), default="squash")
    parser.add_argument("--results", default=results.RESULTS, help="where near_duplicates.{json,txt} go")
    args = parser.parse_args(argv)
    paths = originals(args.images or [SAMPLES])
    if len(paths) < 2:
        parser.error(
            f"need at least 2 original images. Received: {len(paths)} from {args.images or [SAMPLES]}"
        )
    measured = measure(args.weights, paths, args.resize)
    result = {**results.stamp("near_duplicates", "benchmarks.near_duplicates", argv), **measured}
    text = table(result)
    print(text)
    written = results.write(result, text, args.results, "near_duplicates")
    print("wrote " + ", ".join(results.relative(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
