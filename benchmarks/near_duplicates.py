"""Near-duplicate retrieval: do resized, cropped, recompressed and flipped copies find their original?

    python -m benchmarks.near_duplicates --weights vgg16_weights.npz [--images 'photos/*.jpg' ...]

Indexes the originals' fc7 (exact index, as pipeline.index builds it), makes edited copies
of each original, queries with every copy through pipeline.search (same weights, resize and
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.index import ArrayEmbeddings, build_index  # noqa: E402
from pipeline.io import image_id  # noqa: E402
from pipeline.search import Searcher, embed_images  # noqa: E402
from vgg.inference import Predictor  # noqa: E402
from vgg.preprocess import ImageError, load_image  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples", "*")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="npz or Keras h5 VGG16 weights, or 'imagenet'")
    parser.add_argument("--images", action="append", default=None, help="originals (glob; repeatable)")
    parser.add_argument("--resize", choices=("squash", "center_crop"), default="squash")
    args = parser.parse_args(argv)
    paths = originals(args.images or [SAMPLES])
    if len(paths) < 2:
        parser.error(
            f"need at least 2 original images. Received: {len(paths)} from {args.images or [SAMPLES]}"
        )
    predictor = Predictor(args.weights)
    info = predictor.weights
    print(
        f"weights: {info.name}, sha256 {info.sha256}, "
        f"{'UNTRAINED (synthesized random numbers)' if info.untrained else 'trained'}; resize {args.resize}"
    )
    provenance = {
        "weights_name": info.name,
        "weights_sha256": info.sha256,
        "weights_untrained": str(info.untrained).lower(),
        "resize": args.resize,
        "precision": predictor.precision,
    }
    with tempfile.TemporaryDirectory() as tmp:
        fc7 = embed_images(predictor, paths, resize=args.resize)
        build_index(
            ArrayEmbeddings(fc7, [image_id(p) for p in paths], paths), f"{tmp}/index", provenance=provenance
        )
        searcher = Searcher(f"{tmp}/index", predictor=predictor)
        normed = fc7 / np.linalg.norm(fc7, axis=1, keepdims=True)
        others = normed @ normed.T
        np.fill_diagonal(others, np.nan)
        print(
            f"{len(paths)} originals indexed; chance recall@1 {1 / len(paths):.3f}, recall@5 "
            f"{min(5, len(paths)) / len(paths):.3f}; cosine between different originals: mean "
            f"{np.nanmean(others):.3f}, max {np.nanmax(others):.3f}"
        )
        totals = {1: [], 5: []}
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
            results = searcher.index.search(queries, k=5)
            ranks = [
                next((h.rank for h in hits if h.uri == path), None) for hits, path in zip(results, paths)
            ]
            cosines = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ normed.T
            own = np.diag(cosines).copy()
            np.fill_diagonal(cosines, -np.inf)
            margin = own - cosines.max(axis=1)
            at1 = [r == 1 for r in ranks]
            at5 = [r is not None for r in ranks]
            totals[1] += at1
            totals[5] += at5
            print(
                f"  {name:<28} recall@1 {np.mean(at1):.3f}  recall@5 {np.mean(at5):.3f}  "
                f"cosine to own {own.mean():.3f}  margin mean {margin.mean():+.3f} min {margin.min():+.3f}  "
                f"(ranks {ranks})"
            )
        print(f"  {'all edits':<28} recall@1 {np.mean(totals[1]):.3f}  recall@5 {np.mean(totals[5]):.3f}")
    if info.untrained:
        print(
            "NOTE: UNTRAINED weights: these figures describe random filters on this gallery, not VGG16. "
            "With few originals, read the margins and chance levels, not only recall; run with the "
            "genuine weights for the real figure."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
