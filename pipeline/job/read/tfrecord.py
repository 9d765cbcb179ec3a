"""TFRecord shards: framed records (tf.io.TFRecordWriter's format), each a tf.train.Example holding one image.

The three things every format module has: `read` (stream the records' images),
`field_problem` (the launcher's look at the first record's features), `looks_like` (the
first frame's length checksum). The frame reader is our own (TFRecordFrames).
"""

from __future__ import annotations

import gzip
import itertools
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c

from pipeline.job.read.members import Failure, Member, Uris, damaged, either, key_value, too_large

# Without --image_field, the first of these a record has (TF-slim/Object Detection style, TFDS,
# img2dataset).
IMAGE_FIELDS = ("image/encoded", "image", "jpg")
_SKIP_CHUNK = 1 << 20


# tf.io.TFRecordWriter's framing of each record (tensorflow/core/lib/io/record_writer.cc): the
# length (uint64) and its masked CRC32C, the data, the data's masked CRC32C; little-endian.
_FRAME_HEADER = struct.Struct("<QI")
_FRAME_FOOTER = struct.Struct("<I")
_CRC_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum of `data`: its CRC32C rotated right by 15 bits, plus a constant.

    The mask keeps a CRC computed over data that itself holds CRCs from being trivially
    related to them (TensorFlow's crc32c::Mask).
    """
    crc = google_crc32c.value(data)  # C when available; the package falls back to pure Python
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


class FrameError(ValueError):
    """A TFRecord frame that cannot be read; the subclass says what is lost with it."""


class TruncatedFrame(FrameError):
    """The stream ends inside a frame: this record and the framing of the rest are lost."""


class BadLength(FrameError):
    """A frame's length fails its CRC: no later frame can be found, so the rest is lost."""


class BadData(FrameError):
    """A frame's data fails its CRC. The length framed it, so only this record is lost."""


class FrameTooLarge(FrameError):
    """A record over the size cap, skipped unread (the stream is at the next frame)."""

    def __init__(self, size: int):
        super().__init__(f"a record of {size} bytes")
        self.size = size


class TFRecordFrames:
    """The records of a TFRecord stream, one at a time, each checked against both of its CRCs.

    Reads a frame's 12-byte header, then its data and CRC: nothing past the record being
    returned. A record over `max_bytes` (None: no cap) is skipped in 1 MiB reads instead of
    being held. `position` is the byte offset of the next frame in the (decompressed) stream.
    """

    def __init__(self, handle: BinaryIO, max_bytes: int | None = None):
        self._handle = handle
        self._max = max_bytes
        self.position = 0

    def read(self) -> bytes | None:
        """The next record's data, or None where the stream ends cleanly (between frames).

        Raises:
            TruncatedFrame, BadLength: the rest of the stream cannot be read.
            BadData, FrameTooLarge: this record is lost; the next read gives the next one.
        """
        header = self._read(_FRAME_HEADER.size)
        if not header:
            return None
        if len(header) < _FRAME_HEADER.size:
            raise TruncatedFrame(f"{len(header)} of the {_FRAME_HEADER.size} header bytes")
        length, length_crc = _FRAME_HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            raise BadLength(f"header {header.hex()}")
        framed = length + _FRAME_FOOTER.size
        if self._max is not None and length > self._max:
            if not self._skip(framed):
                raise TruncatedFrame(f"the stream ends inside a record of {length} bytes")
            raise FrameTooLarge(length)
        data = self._read(length)  # read apart from its CRC: slicing them apart would copy it
        footer = self._read(_FRAME_FOOTER.size) if len(data) == length else b""
        if len(footer) < _FRAME_FOOTER.size:
            raise TruncatedFrame(f"{len(data) + len(footer)} of the {framed} bytes of data and CRC")
        if masked_crc32c(data) != _FRAME_FOOTER.unpack(footer)[0]:
            raise BadData(f"a record of {length} bytes")
        return data

    def _read(self, size: int) -> bytes:
        """Up to `size` bytes: fewer only at the end of the stream (a read may return less)."""
        chunks, left = [], size
        while left:
            chunk = self._handle.read(left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        self.position += size - left
        return b"".join(chunks)

    def _skip(self, size: int) -> bool:
        while size > 0:
            chunk = self._handle.read(min(size, _SKIP_CHUNK))
            if not chunk:
                return False
            self.position += len(chunk)
            size -= len(chunk)
        return True


def _example_type():
    import tensorflow as tf  # only here: importing it takes seconds

    return tf.train.Example


def read(shard: str, handle, image_field, key_field, max_bytes) -> Iterator[Member | Failure]:
    example_type = _example_type()
    uris = Uris(shard, track=key_field is not None)
    frames = TFRecordFrames(gunzipped(shard, handle), max_bytes)
    for index in itertools.count():
        start = frames.position
        where = f"in record {index} (at byte {start})"
        try:
            record = frames.read()
        except FrameTooLarge as error:
            yield too_large(uris(str(index)), f"record {index}", error.size, max_bytes)
            continue
        except BadData:  # framed by its length: only this record is lost
            uri = uris(str(index))
            message = f"{uri}: record {index} (byte {start}): its data fails its checksum (CRC)"
            yield Failure(uri, "read", "bad_record", message)
            continue
        except FrameError as error:  # no later frame can be found: the rest of the shard is lost
            what = "the file ends inside it" if isinstance(error, TruncatedFrame) else _BAD_LENGTH
            yield damaged(shard, where, what, index, "record(s)")
            return
        except (zlib.error, gzip.BadGzipFile, EOFError) as error:  # a `.gz` shard: corrupt, or cut short
            yield damaged(shard, where, f"corrupt gzip data: {error}", index, "record(s)")
            return
        if record is None:
            return
        yield _example_item(record, index, example_type, uris, image_field, key_field)


_BAD_LENGTH = "its length fails its checksum (CRC)"


def gunzipped(shard: str, handle: BinaryIO) -> BinaryIO:
    """The records of a shard opened as it is stored: gunzipped when its name ends in `.gz`.

    As TFRecordWriter's "GZIP" option writes and Beam reads them (by name). Not Beam's
    decompression: it ends a stream cut short without a word, so that a shard cut in its
    gzip header would read as no records and one cut between records as fewer; Python's
    gzip raises EOFError there (and BadGzipFile for a bad header or CRC): a damaged_shard row.
    """
    return gzip.GzipFile(fileobj=handle, mode="rb") if shard.endswith(".gz") else handle


def _example_item(record: bytes, index: int, example_type, uris: Uris, image_field, key_field):
    try:
        features = example_type.FromString(record).features.feature
    except Exception as error:  # protobuf's DecodeError
        uri = uris(str(index))
        return Failure(uri, "read", "bad_record", f"{uri}: not a tf.train.Example: {error}")
    key = _feature_key(features[key_field]) if key_field and key_field in features else None
    uri = uris(str(index)) if key is None else uris(key)
    names = (image_field,) if image_field else IMAGE_FIELDS
    name = next((n for n in names if n in features), None)
    if name is None:
        found = ", ".join(sorted(features))
        return Failure(uri, "read", "no_image", f"{uri}: no feature {either(names)} (features: {found})")
    feature = features[name]
    if feature.WhichOneof("kind") != "bytes_list" or not feature.bytes_list.value:
        return Failure(uri, "read", "no_image", f"{uri}: feature {name!r} holds no bytes")
    return Member(uri, feature.bytes_list.value[0])


def _feature_key(feature) -> str | bytes | None:
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value if kind else ()
    return key_value(values[0]) if values else None


def field_problem(handle, image_field: str | None, key_field: str | None) -> str | None:
    """What keeps the first record from having the features --image_field/--key_field name, or None.

    Records need not be alike, so only fields a user named are checked, against the first
    record; a shard with no readable first record passes (its rows tell what is wrong).
    """
    names = _first_features(handle)
    if not names:
        return None
    for flag, field in (("--image_field", image_field), ("--key_field", key_field)):
        if field is not None and field not in names:
            return f"its first record has no feature {field!r} for {flag} (features: {', '.join(names)})"
    return None


def _first_features(handle) -> list[str] | None:
    try:
        record = TFRecordFrames(handle).read()
        features = _example_type().FromString(record).features.feature if record is not None else None
    except Exception:  # a damaged first record, or not an Example: the job's rows will say so
        return None
    return sorted(features) if features is not None else None


def looks_like(head: bytes) -> bool:
    """Whether the first record's length header passes its CRC (the data may go on past head)."""
    if len(head) < _FRAME_HEADER.size:
        return False
    _, length_crc = _FRAME_HEADER.unpack_from(head)
    return masked_crc32c(head[:8]) == length_crc
