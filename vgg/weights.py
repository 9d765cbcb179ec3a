"""One entry point for VGG16 weights: read any supported file, check it, load it, synthesize, convert.

Sources: a local path to the seed's npz, to Keras' h5 or to a Keras 3 `.keras` model (the
format is sniffed from the file's bytes, not its name), or "imagenet" for Keras'
hash-checked download of the genuine weights. Synthesized weights are random:
deterministic, in the real layouts, and never trained, so the labels they give are
meaningless. Everything format-specific is in `vgg.weight_formats`; this module goes
through its `FORMATS` registry.

    python -m vgg.weights synth --format npz --seed 0 --out /tmp/vgg16_untrained.npz
    python -m vgg.weights convert vgg16_weights.npz vgg16_weights.h5
    python -m vgg.weights convert my_vgg16.keras vgg16_weights.npz
    python -m vgg.weights inspect vgg16_weights_tf_dim_ordering_tf_kernels.h5
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import math
import os
import sys
from collections.abc import Iterator

import numpy as np

from vgg.architecture import LAYER_NAMES, WEIGHT_SHAPES
from vgg.weight_formats import (
    FORMATS,
    H5_NAMINGS,
    SNIFF_BYTES,
    WRITABLE_FORMATS,
    Layer,
    WeightFormat,
    Weights,
    WeightsError,
    check_weights,
    format_for_name,
    sniff_format,
)

__all__ = [
    "FORMATS",
    "IMAGENET",
    "UNTRAINED_WARNING",
    "Weights",
    "WeightsError",
    "WeightsInfo",
    "apply_weights",
    "describe_weights",
    "read_weights",
    "resolve_source",
    "save_weights",
    "sha256_file",
    "stream_weights",
    "synth_weights",
    "write_synth",
]

IMAGENET = "imagenet"
# What every tool says, once, when the weights it uses are synthesized (WeightsInfo.untrained).
UNTRAINED_WARNING = (
    "UNTRAINED weights (synthesized random numbers): every label and embedding they give is meaningless."
)
# Keras applications' genuine VGG16 weights (include_top=True) and the hash Keras checks.
KERAS_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + KERAS_WEIGHTS_FILE
KERAS_WEIGHTS_MD5 = "64373286793e3c8b2b4e3219cbf3544b"


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """What a weights file is: for provenance and for the launcher's checks."""

    path: str
    format: str
    sha256: str
    untrained: bool  # the file says it holds synthesized random weights

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def sha256_file(path: str) -> str:
    """SHA-256 of a file, remembered per (path, inode, size, mtime) for this process.

    A local job's launcher and its in-process worker both check the same 528 MB file;
    the second check then costs a stat instead of 0.6 s. Any change to the file changes
    its size or mtime and so hashes it again.
    """
    stat = os.stat(path)
    return _sha256_cached(os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_source(source: str) -> str:
    """A local path for `source`; "imagenet" goes through Keras' cache or download."""
    if source != IMAGENET:
        return os.fspath(source)
    from keras.utils import get_file  # noqa: PLC0415  (keras is heavy; only here)

    try:
        return get_file(
            KERAS_WEIGHTS_FILE,
            KERAS_WEIGHTS_URL,
            cache_subdir="models",
            file_hash=KERAS_WEIGHTS_MD5,
        )
    except Exception as error:  # get_file raises bare Exception on network failure
        raise WeightsError(
            f"weights='imagenet': could not get the genuine weights from {KERAS_WEIGHTS_URL} "
            f"({error}). Where this machine cannot reach it, download {KERAS_WEIGHTS_FILE} "
            "(or the seed's vgg16_weights.npz) elsewhere and pass its path instead."
        ) from error


def _open_checked(source: str, sha256: str | None) -> tuple[str, WeightFormat, str]:
    path = resolve_source(source)
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such weights file.")
    if os.path.isdir(path):
        raise WeightsError(f"{path}: is a directory, not a weights file.")
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
        digest = sha256_file(path)
    except OSError as error:
        raise WeightsError(f"{path}: cannot be read ({error.strerror or error}).") from error
    if sha256 is not None and digest != sha256.lower():
        raise WeightsError(
            f"{path}: sha256 is {digest}, expected {sha256.lower()}; refusing a file "
            "that is not the one asked for."
        )
    fmt = sniff_format(head, path)
    if fmt is None:
        titles = [f.title for f in FORMATS.values()]
        raise WeightsError(
            f"{path}: not {', '.join(titles[:-1])} or {titles[-1]} file (starts with {head!r}); "
            "pass the seed's vgg16_weights.npz, Keras' VGG16 .h5 or a model Keras saved (.keras)."
        )
    return path, fmt, digest


def _info(path: str, fmt: WeightFormat, digest: str) -> WeightsInfo:
    return WeightsInfo(path=path, format=fmt.name, sha256=digest, untrained=fmt.is_untrained(path))


def describe_weights(source: str, *, sha256: str | None = None) -> WeightsInfo:
    """Checks a weights file without loading it: format, keys, shapes, optional hash, intact data.

    What a job launcher runs before anything is submitted: it reads the headers and the
    first layer, and the whole file twice, once for the sha256 and once to verify its data
    with the file's own checks (every zip member's CRC-32 in an npz or a `.keras`; in an
    h5, every dataset read, which HDF5 checks against its checksums where the file has
    them). Both passes are remembered per (path, inode, size, mtime) in this process.

    Raises:
      WeightsError: naming the file and what is wrong with it (for damaged data, the
        member or dataset).
    """
    path, fmt, digest = _open_checked(source, sha256)
    layers = fmt.layers(path, path)
    try:
        next(layers)  # every key, shape and dtype is checked before the first (small) layer
    finally:
        layers.close()
    _verify(path, fmt)
    return _info(path, fmt, digest)


def _verify(path: str, fmt: WeightFormat) -> None:
    stat = os.stat(path)
    _verified(os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, fmt.name, path)


@functools.lru_cache(maxsize=16)
def _verified(real_path: str, inode: int, size: int, mtime_ns: int, fmt: str, name: str) -> None:
    """Runs the format's verify once per file version and process (a failure is not remembered)."""
    FORMATS[fmt].verify(real_path, name)


def read_weights(source: str, *, sha256: str | None = None) -> tuple[Weights, WeightsInfo]:
    """Reads and checks a whole weights file (see the module docstring for sources)."""
    path, fmt, digest = _open_checked(source, sha256)
    return fmt.read(path, path), _info(path, fmt, digest)


def apply_weights(model, weights: Weights) -> None:
    """Sets checked weights on a model from `vgg.model.build_vgg16`, by layer name."""
    for layer in LAYER_NAMES:
        model.get_layer(layer).set_weights(list(weights[layer]))


def stream_weights(
    source: str, *, sha256: str | None = None, block_bytes: int | None = None
) -> tuple[Iterator[Layer], WeightsInfo]:
    """(layer, kernel, bias) one layer at a time, after the whole file's structure is checked.

    Keys, shapes and dtypes are validated before this returns, so a bad file raises here
    and not halfway through building a model. With block_bytes, kernels larger than
    that come as `RowBlocks` (read a block at a time; use each before the next layer).
    """
    path, fmt, digest = _open_checked(source, sha256)
    layers = fmt.layers(path, path, block_bytes=block_bytes)
    first = next(layers)  # runs the generator's checks now
    return itertools.chain([first], layers), _info(path, fmt, digest)


def save_weights(weights: Weights, path: str, *, format: str, naming: str = "keras2") -> None:
    """Writes weights in one of the real layouts ("npz": the seed's; "h5": Keras')."""
    if format not in WRITABLE_FORMATS:
        raise ValueError(f"format must be one of {WRITABLE_FORMATS}. Received: format={format!r}")
    FORMATS[format].write(check_weights(weights, path), path, naming=naming)


# Scales for synthesized weights. He-normal keeps activations at a steady size through
# the ReLU stack; conv1_1 is divided by the spread of mean-subtracted pixels so that
# activations start near 1, and fc8 is sized so the softmax is neither flat nor one-hot
# (a loader that dropped biases or swapped channels must change the scores visibly).
_PIXEL_SCALE = 64.0
_FC8_STD = 0.02
_BIAS_STD = 0.1


def synth_weights(seed: int = 0) -> Weights:
    """Deterministic random VGG16 weights. UNTRAINED: for tests and offline demos only."""
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for layer, (kernel_shape, bias_shape) in WEIGHT_SHAPES.items():
        fan_in = math.prod(kernel_shape[:-1])
        std = math.sqrt(2.0 / fan_in)
        if layer == "conv1_1":
            std /= _PIXEL_SCALE
        elif layer == "fc8":
            std = _FC8_STD
        kernel = rng.standard_normal(kernel_shape, dtype=np.float32) * np.float32(std)
        bias = rng.standard_normal(bias_shape, dtype=np.float32) * np.float32(_BIAS_STD)
        weights[layer] = (kernel, bias)
    return weights


def _convert(source: str, target: str, fmt: str, naming: str) -> WeightsInfo:
    weights, info = read_weights(source)
    save_weights(weights, target, format=fmt, naming=naming)
    if info.untrained:  # a converted synthesized file stays labelled
        FORMATS[fmt].mark_untrained(target)
    return info


def write_synth(path: str, *, fmt: str, seed: int, naming: str = "keras2") -> None:
    """Synthesizes weights into `path`, labelled untrained inside the file."""
    save_weights(synth_weights(seed), path, format=fmt, naming=naming)
    FORMATS[fmt].mark_untrained(path)


def _format_for(path: str, given: str | None) -> str:
    if given:
        return given
    fmt = format_for_name(path)
    choices = "|".join(WRITABLE_FORMATS)
    if fmt is None:
        raise SystemExit(f"error: cannot tell the format of {path!r} from its name; pass --format {choices}")
    if fmt.name not in WRITABLE_FORMATS:
        raise SystemExit(
            f"error: {path!r} names {fmt.title} file, which is read here but not written; "
            f"pass --format {choices}"
        )
    return fmt.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg.weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write deterministic random (UNTRAINED) weights")
    synth.add_argument("--format", choices=WRITABLE_FORMATS, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True)
    synth.add_argument("--naming", choices=H5_NAMINGS, default="keras2", help="h5 weight names")
    convert = sub.add_parser("convert", help="npz, h5 or .keras -> npz or h5, computing the same")
    convert.add_argument("input")
    convert.add_argument("output")
    convert.add_argument("--format", choices=WRITABLE_FORMATS, help="output format (default: from its name)")
    convert.add_argument("--naming", choices=H5_NAMINGS, default="keras2", help="h5 weight names")
    inspect = sub.add_parser("inspect", help="check a weights file and print what it is")
    inspect.add_argument("input")
    inspect.add_argument("--sha256", help="expected sha256 of the file")
    args = parser.parse_args(argv)
    from vgg import logs

    logs.configure()
    try:
        if args.command == "synth":
            write_synth(args.out, fmt=args.format, seed=args.seed, naming=args.naming)
            print(
                f"wrote UNTRAINED random weights (seed {args.seed}) to {args.out}; "
                "labels from them are meaningless"
            )
        elif args.command == "convert":
            _convert(args.input, args.output, _format_for(args.output, args.format), args.naming)
            print(f"converted {args.input} -> {args.output}")
        else:
            info = describe_weights(args.input, sha256=args.sha256)
            status = "UNTRAINED (synthesized)" if info.untrained else "ok"
            print(f"{info.path}: {info.format}, sha256 {info.sha256}, {status}")
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
