"""The shard formats, one module each with the same three things: `read`, `field_problem`, `looks_like`.

pipeline.job.read.shards opens a shard and hands its handle to the format's `read`, which
yields a Member or a Failure per member in shard order, holding one member at a time.
"""

from __future__ import annotations

import zlib
from types import ModuleType

from pipeline.job.read import parquet, tfrecord, webdataset

# Name -> module, in the order --input_format lists them.
MODULES: dict[str, ModuleType] = {"webdataset": webdataset, "tfrecord": tfrecord, "parquet": parquet}
FORMATS = tuple(MODULES)
SNIFF_BYTES = 1 << 16
# The name endings (lower case) each format's shards usually have: the launcher opens such files first.
NAMES: dict[str, tuple[str, ...]] = {
    "webdataset": (".tar", ".tar.gz", ".tgz"),
    "tfrecord": tuple(f"{ext}{gz}" for ext in (".tfrecord", ".tfrecords", ".tfrec") for gz in ("", ".gz")),
    "parquet": (".parquet",),
}


def module(fmt: str) -> ModuleType:
    """The module of a shard format.

    Raises:
        ValueError: fmt is not one of FORMATS.
    """
    if fmt not in MODULES:
        raise ValueError(f"fmt must be one of {FORMATS}. Received: fmt={fmt!r}")
    return MODULES[fmt]


def named_like(uri: str, fmt: str) -> bool:
    """Whether a file's name ends as the shards of `fmt` usually do (`.tar`, `.tfrecord`, `.parquet`, ...)."""
    return uri.lower().endswith(NAMES[fmt])


def sniff(head: bytes, uri: str) -> str | None:
    """The format a file's first bytes show (one of FORMATS), or None; looks inside gzip."""
    if parquet.looks_like(head):
        return "parquet"
    gzipped = head.startswith(b"\x1f\x8b")
    if gzipped:
        try:  # look inside: a .tar.gz / .tgz shard, or a gzip TFRecord
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, SNIFF_BYTES)
        except zlib.error:
            return None
    if webdataset.looks_like(head):
        return "webdataset"
    if tfrecord.looks_like(head):
        # Beam decompresses a TFRecord by its name only (`.gz`), as the reader opens it.
        return "tfrecord" if not gzipped or uri.endswith(".gz") else None
    return None
