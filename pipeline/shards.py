"""Sharded image collections: every member of a tar (WebDataset), TFRecord or Parquet shard, streamed.

A shard is opened through Beam's filesystems (local, gs://, s3://) and read as a stream,
one tar member, TFRecord record or few Parquet rows at a time (pipeline.shard_readers),
so it is never held whole. Every member becomes exactly one item: a Member (an image) or
a Failure whose error_type is one of pipeline.io.READ_ERROR_TYPES or SHARD_ERROR_TYPES.

Keys and uris. A member's uri is `SHARD_URI#KEY`, where KEY is
- webdataset: the WebDataset key, the member's path up to the first dot of its last
  component (`00012/000123456.jpg` -> `00012/000123456`); members with one key in a row
  form a sample, whose image is its first member with an image extension (or image_field);
- tfrecord, parquet: the key_field value of the record or row when there is one, else
  its 0-based index in the shard (also for a record too large or too damaged to parse).
A uri already given out in the shard gets `#2` appended (else `#3`, ...), so duplicate
keys are all kept, told apart in shard order, and a shard always gives the same uris.
Failures of the shard as a whole (it cannot be opened or read; it is damaged) carry the
bare SHARD_URI, at most one per shard.
"""

from __future__ import annotations

import itertools
import logging
import time
import zlib
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.io import MAX_INPUT_BYTES, READ_ATTEMPTS, _classify, _first_cause, image_id
from pipeline.schema import error_row
from pipeline.shard_readers import (
    IMAGE_EXTENSIONS,
    PARQUET_IMAGE_FIELDS,
    TFRECORD_IMAGE_FIELDS,
    Failure,
    Member,
    is_tar,
    is_tfrecord,
    read_parquet,
    read_tfrecord,
    read_webdataset,
)
from pipeline.transforms import ERRORS, NAMESPACE

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "PARQUET_IMAGE_FIELDS",
    "SHARD_ERROR_TYPES",
    "TFRECORD_IMAGE_FIELDS",
    "Failure",
    "Member",
    "ReadShard",
    "check_format",
    "read_shard",
    "sniff",
]

FORMATS = ("webdataset", "tfrecord", "parquet")
# New error_types of the read stage (to merge into the errors vocabulary). A shard that
# cannot be opened, and a member over max_bytes, use READ_ERROR_TYPES' names.
SHARD_ERROR_TYPES: dict[str, str] = {
    "damaged_shard": "a truncated or corrupt shard; the message says where, and what it cost; the rest read",
    "bad_record": "a TFRecord record whose data fails its checksum or is not a tf.train.Example",
    "no_image": "a sample, record or row without an image: no such member, feature or column, or a null cell",
}

_DESCRIPTION = {
    "webdataset": "a tar archive (WebDataset shard)",
    "tfrecord": "a TFRecord file",
    "parquet": "a Parquet file",
}
_COMPRESSION = {
    "webdataset": CompressionTypes.UNCOMPRESSED,  # tarfile's "r|*" finds gzip itself, also in .tgz
    "tfrecord": CompressionTypes.AUTO,  # `.gz` is gzip, as TFRecordWriter's "GZIP" option writes
    "parquet": CompressionTypes.UNCOMPRESSED,
}
log = logging.getLogger(__name__)
_retries = Metrics.counter(NAMESPACE, "read_retries")  # the counter pipeline.io's retries count in
_READERS = {"webdataset": read_webdataset, "tfrecord": read_tfrecord, "parquet": read_parquet}
_SNIFF_BYTES = 1 << 16


def read_shard(
    uri: str,
    fmt: str,
    *,
    image_field: str | None = None,
    key_field: str | None = None,
    max_bytes: int = MAX_INPUT_BYTES,
    attempts: int = READ_ATTEMPTS,
    backoff_s: float = 0.5,
    sleep=time.sleep,
) -> Iterator[Member | Failure]:
    """Streams one shard: an item per member, in shard order; never raises for bad data.

    A read that fails (not damage: an I/O error, e.g. a dropped connection) is retried
    like pipeline.io.read_bytes: `attempts` tries in all with exponential backoff, not
    found and permission errors at once never. A retry reopens the shard and passes over
    the items already yielded (the order is fixed), so none is yielded twice.

    Args:
        uri: The shard (local path, gs://, s3://, ...).
        fmt: One of FORMATS.
        image_field: The image member's suffix (webdataset), feature (tfrecord) or column
            (parquet); default: the first present of the format's defaults.
        key_field: The feature or column holding each record's key (tfrecord, parquet).
        max_bytes: A larger member is a "too_large" Failure (--max_input_bytes).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}. Received: fmt={fmt!r}")
    done = 0
    for attempt in range(1, attempts + 1):
        try:
            with FileSystems.open(uri, compression_type=_COMPRESSION[fmt]) as handle:
                items = _READERS[fmt](uri, handle, image_field, key_field, max_bytes)
                for item in itertools.islice(items, done, None):
                    yield item
                    done += 1
            return
        except Exception as error:  # cloud clients raise their own types, not only OSError
            kind = _classify(error)
            if kind is None and attempt < attempts:
                _retries.inc()
                log.warning("read of %s failed (%s); retry %d of %d", uri, error, attempt, attempts - 1)
                sleep(backoff_s * 2 ** (attempt - 1))
                continue
            tries = f" (tried {attempts} times)" if kind is None else ""
            after = f"after {done} member(s)" if done else "before any member"
            message = f"{uri}: reading failed {after}{tries}: {_first_cause(error)}"
            yield Failure(uri, "read", kind or "read_error", message)
            return


def sniff(uri: str) -> str | None:
    """The shard format a file's first 64 KiB show (one of FORMATS), or None.

    Raises:
        ValueError: the file cannot be read.
    """
    return _sniff(_head(uri), uri)


def check_format(uri: str, fmt: str) -> None:
    """Fails unless the file looks like `fmt`: the launcher's check of a pattern's first file.

    Raises:
        ValueError: naming the file, the format asked for and what the file looks like.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}. Received: fmt={fmt!r}")
    head = _head(uri)
    found = _sniff(head, uri)
    if found == fmt:
        return
    if found is not None:
        seen = f"it looks like {_DESCRIPTION[found]}: pass --input_format {found}"
    elif not head:
        seen = "it is empty"
    else:
        seen = f"its first bytes ({head[:8].hex(' ')}) are none of the shard formats'"
    raise ValueError(f"--input_format {fmt}: {uri} does not look like {_DESCRIPTION[fmt]}; {seen}.")


def _head(uri: str) -> bytes:
    try:
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read(_SNIFF_BYTES)
    except Exception as error:  # cloud clients raise their own types, not only OSError
        raise ValueError(f"{uri} cannot be read: {_first_cause(error)}") from error


def _sniff(head: bytes, uri: str) -> str | None:
    if head.startswith(b"PAR1"):
        return "parquet"
    gzipped = head.startswith(b"\x1f\x8b")
    if gzipped:
        try:  # look inside: a .tar.gz / .tgz shard, or a gzip TFRecord
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, _SNIFF_BYTES)
        except zlib.error:
            return None
    if is_tar(head):
        return "webdataset"
    if is_tfrecord(head):
        # Beam decompresses a TFRecord by its name only (`.gz`), as the reader opens it.
        return "tfrecord" if not gzipped or uri.endswith(".gz") else None
    return None


# -- the Beam step


class ReadShard(beam.DoFn):
    """shard uri -> (image_id, uri, bytes) per image member; the rest to the "errors" output.

    The same shapes and counters as pipeline.transforms.ReadImage, one shard at a time:
    a DoFn instance streams one shard before taking the next, so the shards in flight on a
    worker are at most its DoFn threads, each holding one member (at most max_bytes).
    """

    def __init__(
        self,
        fmt: str,
        *,
        image_field: str | None = None,
        key_field: str | None = None,
        max_bytes: int = MAX_INPUT_BYTES,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}. Received: fmt={fmt!r}")
        self._fmt = fmt
        self._image_field = image_field
        self._key_field = key_field
        self._max_bytes = max_bytes
        self._read = Metrics.counter(NAMESPACE, "images_read")
        self._failed = Metrics.counter(NAMESPACE, "failed_read")
        self._shards = Metrics.counter(NAMESPACE, "shards_read")

    def process(self, shard: str):
        self._shards.inc()
        items = read_shard(
            shard,
            self._fmt,
            image_field=self._image_field,
            key_field=self._key_field,
            max_bytes=self._max_bytes,
        )
        for item in items:
            key = image_id(item.uri)
            if isinstance(item, Failure):
                self._failed.inc()
                row = error_row(key, item.uri, item.stage, item.error_type, item.message)
                yield beam.pvalue.TaggedOutput(ERRORS, row)
            else:
                self._read.inc()
                yield key, item.uri, item.data
