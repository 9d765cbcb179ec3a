"""Top-k ImageNet labels (and optionally fc7) for image files: the 2016 demo, grown up.

python -m vgg.predict --weights vgg16_weights.npz samples/chelsea.png
python -m vgg.predict --weights imagenet --json --fc7 a.jpg b.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from vgg.architecture import FC7_DIM, NUM_CLASSES, PRECISIONS  # noqa: E402
from vgg.classes import decode_predictions  # noqa: E402
from vgg.preprocess import RESIZE_MODES, ImageError  # noqa: E402
from vgg.sandbox import DECODE_TIMEOUT_S, DecodeFailed, DecoderCrashed, IsolatedDecoder  # noqa: E402
from vgg.weights import UNTRAINED_WARNING, WeightsError, describe_weights  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vgg.predict", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--weights", required=True, help="npz, Keras h5, or 'imagenet'")
    parser.add_argument("--weights_sha256", help="refuse a weights file with another sha256")
    parser.add_argument("--top_k", type=int, default=5, help="labels per image (default 5)")
    parser.add_argument(
        "--resize", choices=RESIZE_MODES, default=RESIZE_MODES[0], help=f"default {RESIZE_MODES[0]}"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0])
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--fc7", action="store_true", help=f"also output the {FC7_DIM}-d fc7 embedding")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    if not 1 <= args.top_k <= NUM_CLASSES:
        parser.error(f"--top_k must be between 1 and {NUM_CLASSES}. Received: {args.top_k}")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1. Received: {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vgg import logs

    logs.configure()
    try:
        info = describe_weights(args.weights, sha256=args.weights_sha256)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if info.untrained:
        print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)

    import numpy as np  # noqa: PLC0415

    from vgg.inference import Predictor  # noqa: PLC0415  (imports TensorFlow)

    predictor = Predictor(info.path, precision=args.precision, sha256=info.sha256)
    # The images are untrusted bytes: decoded in a child process, as the Beam job decodes
    # them, so a crash or a hang in a native decoder is one error line, not this process.
    decoder = IsolatedDecoder(timeout_s=DECODE_TIMEOUT_S)
    try:
        failed = _label(args, predictor, decoder, np)
    finally:
        decoder.close()
    return 1 if failed else 0


def _label(args: argparse.Namespace, predictor, decoder: IsolatedDecoder, np) -> int:
    """Prints each image's labels; returns how many images failed (each named on stderr)."""
    failed = 0
    for start in range(0, len(args.images), args.batch_size):
        uris, pixels = [], []
        for uri in args.images[start : start + args.batch_size]:
            try:
                with open(uri, "rb") as file:
                    data = file.read()
                pixels.append(decoder(data, resize=args.resize).pixels)
                uris.append(uri)
            except (ImageError, DecoderCrashed, DecodeFailed, OSError) as error:
                failed += 1
                kind = getattr(
                    error, "error_type", "decode_error" if isinstance(error, DecodeFailed) else "read_error"
                )
                print(f"error: {uri}: {kind}: {error}", file=sys.stderr)
        if not uris:
            continue
        probs, fc7 = predictor(np.stack(pixels))
        for uri, labels, embedding in zip(uris, decode_predictions(probs, top=args.top_k), fc7):
            if args.json:
                record = {"uri": uri, "labels": labels}
                if args.fc7:
                    record["fc7"] = embedding.tolist()
                print(json.dumps(record))
            else:
                print(uri)
                for rank, label in enumerate(labels, start=1):
                    print(f"  {rank}. {label['score']:.4f}  {label['wnid']}  {label['label']}")
                if args.fc7:
                    print(f"  fc7: {np.array2string(embedding[:6], precision=4)} ... ({FC7_DIM} floats)")
    return failed


if __name__ == "__main__":
    sys.exit(main())
