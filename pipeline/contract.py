"""The output contract: table schemas, shard names, provenance, and the transform that writes both tables.

Every reader and writer of a job's output goes through here: `pipeline.run` writes with
`WriteOutputs`, `pipeline.resume` finds earlier shards and compares their provenance,
and `pipeline.index`, `search`, `report` and `show` read the tables and their provenance.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet

from pipeline.inputs import READ_ERROR_TYPES, first_cause
from pipeline.sandbox import DECODER_ERROR_TYPES
from vgg.architecture import FC7_DIM
from vgg.classes import class_names, top_k
from vgg.preprocess import ERROR_TYPES as IMAGE_ERROR_TYPES
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
_ATTEMPT = re.compile(r"-r(\d+)-\d+-of-\d+\.parquet$")
__all__ = ["UNTRAINED_WARNING"]  # re-exported: the one warning text, from vgg.weights

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


# ------------------------------------------------------------------- schemas and rows


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


def read_schema(path: str) -> pa.Schema:
    """The Arrow schema (columns and provenance) of one shard, local or remote."""
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return pq.read_schema(handle)


def read_provenance(path: str) -> dict[str, str]:
    return decode_provenance(read_schema(path).metadata)


def disagreements(old: dict[str, str], new: dict[str, str], keys: tuple[str, ...]) -> list[str]:
    """`key 'old' -> 'new'` for each key whose value differs (a missing key counts as None)."""
    return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def is_untrained(values: dict[str, str]) -> bool:
    return values.get("weights_untrained") == "true"


# ------------------------------------------------------------------- shard names


def shard_prefix(output: str, table: str, attempt: int = 0) -> str:
    """The file prefix of a table's shards: `output/table` for attempt 0, else `output/table-r00n`.

    A first run writes `predictions-00000-of-00004.parquet`; resumed attempt n writes
    `predictions-r00n-00000-of-00002.parquet` beside it, so no shard is ever overwritten
    and every shard still matches shard_glob.
    """
    base = FileSystems.join(output, table)
    return base if attempt == 0 else f"{base}-r{attempt:03d}"


def shard_glob(output: str, table: str) -> str:
    """The pattern matching every shard of a table in `output`, of every attempt."""
    return FileSystems.join(output, f"{table}-*-of-*{SUFFIX}")


def match(pattern: str) -> list[str]:
    """Sorted paths matching a pattern (local, gs://, s3://); none when it cannot be listed."""
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except (BeamIOError, OSError):
        return []


@dataclasses.dataclass(frozen=True)
class Shards:
    """The shards already in an output directory, per table."""

    predictions: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return self.predictions + self.errors

    @property
    def next_attempt(self) -> int:
        """1 + the highest attempt number found (a first run's shards count as attempt 0)."""
        found = [int(m.group(1)) for p in self.paths if (m := _ATTEMPT.search(p))]
        return max(found, default=0) + 1 if self.paths else 0


def find_shards(output: str) -> Shards:
    return Shards(
        predictions=tuple(match(shard_glob(output, PREDICTIONS))),
        errors=tuple(match(shard_glob(output, ERRORS))),
    )


# ------------------------------------------------------------------- writing


class WriteOutputs(beam.PTransform):
    """{"predictions": rows, "errors": rows} -> the two Parquet tables, zstd, provenance in each footer."""

    def __init__(self, output: str, *, provenance: dict[str, str], embeddings: bool, attempt: int = 0):
        super().__init__()
        self._output = output
        self._provenance = provenance
        self._embeddings = embeddings
        self._attempt = attempt

    def expand(self, tables):
        common = {"codec": "zstd", "file_name_suffix": SUFFIX, "shard_name_template": SHARD_TEMPLATE}
        schemas = {
            PREDICTIONS: predictions_schema(embeddings=self._embeddings, provenance=self._provenance),
            ERRORS: errors_schema(provenance=self._provenance),
        }
        # fc7 rows are 16 KiB each: smaller record batches keep a writer's memory flat.
        batch_rows = {PREDICTIONS: 256, ERRORS: 1000}
        return {
            table: tables[table]
            | f"Write{table.title()}"
            >> WriteToParquet(
                shard_prefix(self._output, table, self._attempt),
                schemas[table],
                record_batch_size=batch_rows[table],
                **common,
            )
            for table in TABLES
        }


def check_output_writable(output: str) -> None:
    """Creates the output directory if needed and proves a file can be written there.

    Raises:
        OutputError: naming the directory and why.
    """
    probe = FileSystems.join(output, f".write-check-{os.getpid()}")
    try:
        if "://" not in output:
            os.makedirs(output, exist_ok=True)
        with FileSystems.create(probe) as handle:
            handle.write(b"ok")
        FileSystems.delete([probe])
    except (BeamIOError, OSError) as error:
        raise OutputError(f"--output {output!r} is not writable: {first_cause(error)}") from error


class OutputError(ValueError):
    """An output directory the job cannot write."""


def remove_shards(paths: tuple[str, ...] | list[str]) -> None:
    if paths:
        log.info("replacing %d existing output file(s)", len(paths))
        FileSystems.delete(list(paths))


def remove_empty_temp_dirs(output: str) -> None:
    """Removes the empty `beam-temp-*` folders a local output can keep after retried bundles.

    Beam's file sinks make a uniquely named temp folder per (attempt of) their
    initialisation and delete only the one the final write used. Object stores have no
    empty folders; locally, rmdir only ever removes an empty one, so a folder another
    job is still writing into is left alone.
    """
    if "://" in output or not os.path.isdir(output):
        return
    for name in os.listdir(output):
        if name.startswith(tuple(f"beam-temp-{table}" for table in TABLES)):
            try:
                os.rmdir(os.path.join(output, name))
            except OSError:
                continue
