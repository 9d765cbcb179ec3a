"""The output contract: the two tables' schemas and rows, the errors vocabulary, provenance, shard names.

One home for what the job writes and every reader reads: the job (pipeline.job) writes
these rows under these names, `pipeline.job.resume` compares provenance, and the tools
(pipeline.tools: index, search, report, show, export) read them. Nothing here imports
Beam: a reader of an output needs only this module and pyarrow (pipeline.storage lists
and opens an output's files wherever they are).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import urllib.parse

import numpy as np
import pyarrow as pa

from vgg.architecture import FC7_DIM
from vgg.classes import class_names, top_k
from vgg.preprocess import ERROR_TYPES as IMAGE_ERROR_TYPES
from vgg.sandbox import DECODER_ERROR_TYPES
from vgg.weights import UNTRAINED_WARNING, WeightsInfo

log = logging.getLogger(__name__)

PREDICTIONS, ERRORS = "predictions", "errors"
TABLES = (PREDICTIONS, ERRORS)
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SUFFIX = ".parquet"
# Every provenance key is stored in the Parquet footer under this prefix.
METADATA_PREFIX = "vgg16."
# Provenance that changes the fc7 vectors: embeddings compare only when these agree.
EMBEDDING_KEYS = ("weights_sha256", "resize", "precision")
# Provenance that must agree for old and new rows to share one table (a --resume).
TABLE_KEYS = (*EMBEDDING_KEYS, "top_k")
__all__ = ["UNTRAINED_WARNING"]  # re-exported: the one warning text, from vgg.weights

# The error_type of an errors row from the read stage, for loose files and shards
# (pipeline.job.read.shards) alike: the one home of this vocabulary.
READ_ERROR_TYPES: dict[str, str] = {
    "not_found": "the file does not exist (any more): deleted between listing and reading",
    "permission_denied": "the job's credentials may not read the file",
    "too_large": "the file or shard member is over --max_input_bytes; not read to the end",
    "read_error": "any other read failure, after retries with backoff",
    "damaged_shard": "a truncated or corrupt shard; the message says where, and what it cost; the rest read",
    "bad_record": "a TFRecord record whose data fails its checksum or is not a tf.train.Example",
    "no_image": "a sample, record or row without an image: no such member, feature or column, or a null cell",
    "not_a_file": "a directory, FIFO, socket or device: never opened",
    "symlink_loop": "a loop of symbolic links: the name leads to no file",
    "read_timeout": "reading the input took longer than --read_timeout_s; not retried",
}

LABEL = pa.struct(
    [
        ("class_index", pa.int32()),
        ("wnid", pa.string()),
        ("label", pa.string()),
        ("score", pa.float32()),
    ]
)
# Stages an errors row can name, in pipeline order.
STAGES = ("read", "decode", "inference")
# The whole vocabulary of an errors row: stage -> error_type -> meaning. Stable: users
# filter on these strings, so a new kind of failure gets a new name, never a reused one.
ERROR_TYPES: dict[str, dict[str, str]] = {
    "read": dict(READ_ERROR_TYPES),
    "decode": {**IMAGE_ERROR_TYPES, **DECODER_ERROR_TYPES},
    "inference": {"inference_error": "the model failed on the batch holding this image"},
}


# ------------------------------------------------------------------- ids, schemas and rows


def image_id(uri: str) -> str:
    """Stable, unique id of an input: the first 32 hex digits (128 bits) of SHA-256 of its URI.

    `uri` is always valid UTF-8: a name that is not is spelled first (path_uri, key_uri).
    """
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:32]


# ------------------------------------------------------------------- names that are not UTF-8
# A uri is a Parquet string and the input of image_id, so it must be valid UTF-8; names on
# disk and in tar files are bytes. A name whose bytes are UTF-8 is written as it is (so the
# uris and image_ids of earlier runs stay); any other is percent-encoded behind a marker no
# name written as it is can start with, so each spelling names one input and reads back to
# its bytes (docs/output.md#names-that-are-not-utf-8).

FILE_URI = "file://"
# A key (the part of a shard member's uri after '#') starting with this is percent-encoded.
ENCODED_KEY = "%"
_SCHEME = re.compile(r"^[a-zA-Z][-a-zA-Z0-9+.]*://")


def has_scheme(uri: str) -> bool:
    """Whether `uri` names a filesystem by scheme (gs://, s3://, file://), not a plain local path."""
    return _SCHEME.match(uri) is not None


def path_uri(path: str | bytes) -> str:
    """The uri of an absolute local path: the path itself when its bytes are UTF-8, else a file:// URI.

    The file:// URI (RFC 8089) percent-encodes the path's bytes (urllib.parse.quote, "/"
    kept); a path given as str is taken as Python holds file names (os.fsencode).
    """
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return FILE_URI + urllib.parse.quote(raw, safe="/")


def uri_path(uri: str) -> str:
    """The local path a local uri names (a str as os functions take it: undecodable bytes as
    surrogate escapes); the inverse of path_uri. A plain path is returned as it is.

    Raises:
        ValueError: a file:// URI naming another host, or a uri of another scheme.
    """
    if not uri.startswith(FILE_URI):
        if has_scheme(uri):
            raise ValueError(f"not a local path or file:// URI. Received: {uri!r}")
        return uri
    rest = uri[len(FILE_URI) :]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    if not rest.startswith("/"):
        raise ValueError(f"a file:// URI must name an absolute path on this host. Received: {uri!r}")
    return os.fsdecode(urllib.parse.unquote_to_bytes(rest))


def key_uri(key: str | bytes) -> str:
    """How a shard member's key (tar member name, TFRecord or Parquet key) is written in its uri.

    A key whose bytes are UTF-8 and that does not start with ENCODED_KEY is written as it
    is; any other is ENCODED_KEY followed by its bytes percent-encoded (urllib.parse.quote,
    "/" kept): b"caf\\xe9" -> "%caf%E9", "%20" -> "%%2520". A str key is taken as Python holds
    a name it could not decode (surrogate escapes, as tarfile and os.fsdecode make them).
    """
    raw = key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not text.startswith(ENCODED_KEY):
        return text
    return ENCODED_KEY + urllib.parse.quote(raw, safe="/")


def key_bytes(spelled: str) -> bytes:
    """The bytes of a key as key_uri wrote it; the inverse of key_uri."""
    if spelled.startswith(ENCODED_KEY):
        return urllib.parse.unquote_to_bytes(spelled[len(ENCODED_KEY) :])
    return spelled.encode("utf-8")


def printable(text: str) -> str:
    """`text` with each undecodable byte (a surrogate escape) written as \\xNN: valid UTF-8 for a message."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def predictions_schema(*, embeddings: bool, provenance: dict[str, str]) -> pa.Schema:
    """image_id, uri, width, height, labels (top_k structs, best first), and fc7 if asked."""
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("labels", pa.list_(LABEL), nullable=False),
    ]
    if embeddings:
        fields.append(pa.field("fc7", pa.list_(pa.float32(), FC7_DIM), nullable=False))
    return pa.schema(fields, metadata=encode_provenance(provenance))


def errors_schema(*, provenance: dict[str, str]) -> pa.Schema:
    """image_id, uri, and where (stage) and why (error_type, message) the input failed."""
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("error_type", pa.string(), nullable=False),
            pa.field("message", pa.string(), nullable=False),
        ],
        metadata=encode_provenance(provenance),
    )


def prediction_rows(keys, probs: np.ndarray, fc7: np.ndarray | None, k: int) -> list[dict]:
    """Rows for a batch: keys are (image_id, uri, width, height)."""
    names = class_names()
    indices, scores = top_k(probs, k)
    rows = []
    for i, (image_id, uri, width, height) in enumerate(keys):
        row = {
            "image_id": image_id,
            "uri": uri,
            "width": int(width),
            "height": int(height),
            "labels": [
                {"class_index": int(c), "wnid": names[c].wnid, "label": names[c].label, "score": float(s)}
                for c, s in zip(indices[i], scores[i])
            ],
        }
        if fc7 is not None:
            row["fc7"] = fc7[i]
        rows.append(row)
    return rows


def error_row(image_id: str, uri: str, stage: str, error_type: str, message: str) -> dict:
    return {
        "image_id": image_id,
        "uri": uri,
        "stage": stage,
        "error_type": error_type,
        "message": message[:2000],
    }


# ------------------------------------------------------------------- provenance


def provenance(
    *, weights: str, info: WeightsInfo, resize: str, precision: str, top_k: int, version: str
) -> dict[str, str]:
    """What a reader needs to trust and compare the rows: which weights, settings and code wrote them."""
    return {
        "weights_name": info.name if weights == "imagenet" else os.path.basename(weights),
        "weights_sha256": info.sha256,
        "weights_untrained": str(info.untrained).lower(),
        "resize": resize,
        "precision": precision,
        "top_k": str(top_k),
        "package_version": version,
        "image_id": "first 32 hex digits of sha256(uri)",
    }


def encode_provenance(values: dict[str, str]) -> dict[bytes, bytes]:
    return {f"{METADATA_PREFIX}{k}".encode(): str(v).encode() for k, v in values.items()}


def decode_provenance(metadata: dict[bytes, bytes] | None) -> dict[str, str]:
    """The provenance in a Parquet schema's metadata (other keys, e.g. pandas', are ignored)."""
    found = {k.decode(): v.decode() for k, v in (metadata or {}).items()}
    return {k.removeprefix(METADATA_PREFIX): v for k, v in found.items() if k.startswith(METADATA_PREFIX)}


def disagreements(old: dict[str, str], new: dict[str, str], keys: tuple[str, ...]) -> list[str]:
    """`key 'old' -> 'new'` for each key whose value differs (a missing key counts as None)."""
    return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def is_untrained(values: dict[str, str]) -> bool:
    return values.get("weights_untrained") == "true"


# ------------------------------------------------------------------- shard names


def join(output: str, name: str) -> str:
    """`output/name` for a local folder or a bucket URI (gs://b/out, s3://b/out), as Beam joins them."""
    if "://" in output:
        return f"{output.rstrip('/')}/{name}"
    return os.path.join(output, name)


def legacy_glob(output: str, table: str) -> str:
    """The pattern of a table's shards in a 0.1 output (flat `OUT/predictions-00000-of-00004.parquet`)."""
    return join(output, f"{table}-*-of-*{SUFFIX}")


@dataclasses.dataclass(frozen=True)
class Shards:
    """The data files of an output's committed version, per table (pipeline.table.Snapshot)."""

    predictions: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return self.predictions + self.errors
