"""Streaming readers of one open shard, one per format: tar (WebDataset), TFRecord, Parquet.

Each takes the shard's uri and an open handle and yields a Member or a Failure per member,
in shard order, holding one member at a time. pipeline.shards opens the shard and is the
API; the rules (keys, uris, error types) are documented there.
"""

from __future__ import annotations

import itertools
import re
import struct
import tarfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

import google_crc32c
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# A WebDataset sample's image: the first member (in tar order) with one of these suffixes.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
# Without --image_field, the first of these a record has (TF-slim/Object Detection style, TFDS,
# img2dataset) ...
TFRECORD_IMAGE_FIELDS = ("image/encoded", "image", "jpg")
# ... or a Parquet file has as a column (img2dataset, Hugging Face datasets, others).
PARQUET_IMAGE_FIELDS = ("jpg", "image", "image_bytes")

# WebDataset's base_plus_ext: key = the path up to the first dot of the last component.
_KEY_AND_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_PARQUET_ROWS = 32  # rows per batch: a batch holds at most this many images
_PARQUET_BUFFER = 1 << 20  # pages are read through a 1 MiB buffer, not a column chunk at once
_SKIP_CHUNK = 1 << 20


class Member(NamedTuple):
    """One image of a shard."""

    uri: str
    data: bytes


class Failure(NamedTuple):
    """A member (or the whole shard) that yields no image; error_type as in an errors row."""

    uri: str
    stage: str
    error_type: str
    message: str


class _Uris:
    """SHARD#KEY, made unique within the shard by appending #2, #3, ... in shard order.

    With keys that are always indices (track=False) no uri can repeat: nothing is kept.
    """

    def __init__(self, shard: str, *, track: bool = True):
        self._shard = shard
        self._given: set[str] | None = set() if track else None

    def __call__(self, key: str) -> str:
        uri = f"{self._shard}#{key}"
        if self._given is None:
            return uri
        candidate = uri
        for n in itertools.count(2):
            if candidate not in self._given:
                break
            candidate = f"{uri}#{n}"
        self._given.add(candidate)
        return candidate


def _damaged(shard: str, where: str, what: str, done: int, unit: str) -> Failure:
    message = f"{shard}: damaged {where}: {what}; {done} {unit} read before it, the rest not read"
    return Failure(shard, "read", "damaged_shard", message)


def _too_large(uri: str, what: str, size: int, max_bytes: int) -> Failure:
    message = f"{uri}: {what} is {size} bytes, over {max_bytes} (--max_input_bytes); not read"
    return Failure(uri, "read", "too_large", message)


# -- webdataset


class _TarInfo(tarfile.TarInfo):
    """Remembers the header error that ended the archive.

    tarfile ends an archive quietly at a missing, short or invalid header after the first
    one, exactly as at the two zero blocks that really end it; only the error raised here
    tells a finished archive from a cut or garbled one.
    """

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as error:
            tar.vgg16_end = error
            raise


class _Sample:
    """The members of one key seen so far; the image's bytes, or why there are none."""

    def __init__(self, key: str):
        self.key = key
        self.suffixes: list[str] = []
        self.data: bytes | None = None
        self.too_large: tarfile.TarInfo | None = None

    @property
    def has_image(self) -> bool:
        return self.data is not None or self.too_large is not None

    def item(self, uri: str, image_field: str | None, max_bytes: int) -> Member | Failure:
        if self.data is not None:
            return Member(uri, self.data)
        if self.too_large is not None:
            return _too_large(uri, f"member {self.too_large.name!r}", self.too_large.size, max_bytes)
        wanted = f"suffix {image_field!r}" if image_field else "an image extension"
        message = f"{uri}: no member with {wanted} (members: {', '.join(self.suffixes)})"
        return Failure(uri, "read", "no_image", message)


def read_webdataset(shard: str, handle, image_field, _key_field, max_bytes) -> Iterator[Member | Failure]:
    uris = _Uris(shard)
    wanted = (image_field.lower(),) if image_field else IMAGE_EXTENSIONS
    sample, done, where = None, 0, "at byte 0"
    try:
        tar = tarfile.open(fileobj=handle, mode="r|*", tarinfo=_TarInfo)
        stream = _tar_stream(tar)
        last = None
        while True:
            where = f"at byte {tar.offset} of the {stream}" + (f", after member {last!r}" if last else "")
            member = tar.next()
            if member is None:
                break
            tar.members.clear()  # stream mode keeps every TarInfo; a shard can hold 10^5 members
            last = member.name
            key, suffix = _split_name(member.name) if member.isfile() else (None, None)
            if key is None:
                continue  # directories, links, names without a dot: not sample members
            if sample is None or key != sample.key or suffix in sample.suffixes:
                if sample is not None:  # WebDataset starts a sample where the key changes
                    yield sample.item(uris(sample.key), image_field, max_bytes)
                    done += 1
                sample = _Sample(key)
            sample.suffixes.append(suffix)
            if sample.has_image or suffix not in wanted:
                continue  # only the first image member is read; the others are skipped unread
            if member.size > max_bytes:
                sample.too_large = member
            else:
                where = f"in member {member.name!r} (data from byte {member.offset_data} of the {stream})"
                sample.data = tar.extractfile(member).read()
    except tarfile.TarError as error:
        if sample is not None and sample.has_image:  # its image was read whole before the damage
            yield sample.item(uris(sample.key), image_field, max_bytes)
            done += 1
        yield _damaged(shard, where, str(error), done, "sample(s)")
        return
    if sample is not None:
        yield sample.item(uris(sample.key), image_field, max_bytes)
        done += 1
    end = getattr(tar, "vgg16_end", None)
    if not isinstance(end, tarfile.EOFHeaderError):  # not the end-of-archive blocks: cut or garbled
        what = _HEADER_PROBLEMS.get(type(end), f"invalid header ({end})")
        yield _damaged(shard, where, what, done, "sample(s)")


# Why tarfile stopped where neither a header nor the end-of-archive marker is.
_HEADER_PROBLEMS = {
    tarfile.EmptyHeaderError: "the file ends there, without the end-of-archive marker (truncated)",
    tarfile.TruncatedHeaderError: "the file ends inside a header (truncated)",
}


def _tar_stream(tar: tarfile.TarFile) -> str:
    kind = getattr(tar.fileobj, "comptype", "tar")
    return "tar stream" if kind == "tar" else f"uncompressed tar stream (the file is {kind})"


def _split_name(name: str) -> tuple[str | None, str | None]:
    match = _KEY_AND_SUFFIX.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, None)


# -- tfrecord


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


def read_tfrecord(shard: str, handle, image_field, key_field, max_bytes) -> Iterator[Member | Failure]:
    example_type = _example_type()
    uris = _Uris(shard, track=key_field is not None)
    frames = TFRecordFrames(handle, max_bytes)
    for index in itertools.count():
        start = frames.position
        where = f"in record {index} (at byte {start})"
        try:
            record = frames.read()
        except FrameTooLarge as error:
            yield _too_large(uris(str(index)), f"record {index}", error.size, max_bytes)
            continue
        except BadData:  # framed by its length: only this record is lost
            uri = uris(str(index))
            message = f"{uri}: record {index} (byte {start}): its data fails its checksum (CRC)"
            yield Failure(uri, "read", "bad_record", message)
            continue
        except FrameError as error:  # no later frame can be found: the rest of the shard is lost
            what = "the file ends inside it" if isinstance(error, TruncatedFrame) else _BAD_LENGTH
            yield _damaged(shard, where, what, index, "record(s)")
            return
        except zlib.error as error:  # a `.gz` shard whose compressed stream is corrupt
            yield _damaged(shard, where, f"corrupt gzip data: {error}", index, "record(s)")
            return
        if record is None:
            return
        yield _example_item(record, index, example_type, uris, image_field, key_field)


_BAD_LENGTH = "its length fails its checksum (CRC)"


def _example_item(record: bytes, index: int, example_type, uris: _Uris, image_field, key_field):
    try:
        features = example_type.FromString(record).features.feature
    except Exception as error:  # protobuf's DecodeError
        uri = uris(str(index))
        return Failure(uri, "read", "bad_record", f"{uri}: not a tf.train.Example: {error}")
    key = _feature_key(features[key_field]) if key_field and key_field in features else None
    uri = uris(str(index)) if key is None else uris(key)
    names = (image_field,) if image_field else TFRECORD_IMAGE_FIELDS
    name = next((n for n in names if n in features), None)
    if name is None:
        found = ", ".join(sorted(features))
        return Failure(uri, "read", "no_image", f"{uri}: no feature {_either(names)} (features: {found})")
    feature = features[name]
    if feature.WhichOneof("kind") != "bytes_list" or not feature.bytes_list.value:
        return Failure(uri, "read", "no_image", f"{uri}: feature {name!r} holds no bytes")
    return Member(uri, feature.bytes_list.value[0])


def _feature_key(feature) -> str | None:
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value if kind else ()
    return _text(values[0]) if values else None


# -- parquet


def read_parquet(shard: str, handle, image_field, key_field, max_bytes) -> Iterator[Member | Failure]:
    try:
        parquet = pq.ParquetFile(handle, buffer_size=_PARQUET_BUFFER)
    except (OSError, pa.ArrowException) as error:
        message = f"{shard}: damaged: not a readable Parquet file ({_one_line(error)}); no row read"
        yield Failure(shard, "read", "damaged_shard", message)
        return
    schema = parquet.schema_arrow
    image, path, problem = _image_column(schema, image_field)
    key = key_field if key_field in schema.names else None
    columns = [c for c in (path, key) if c is not None]
    uris = _Uris(shard, track=key is not None)
    first, damage, lost = 0, [], 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        index = first
        try:
            if columns:
                batches = parquet.iter_batches(_PARQUET_ROWS, row_groups=[group], columns=columns)
            else:  # no column to read: the row count says how many rows there are
                batches = [pa.record_batch({"row": pa.nulls(rows)})]
            for batch in batches:
                images = _image_values(batch.column(image)) if image else None
                lengths = pc.binary_length(images) if image else None
                keys = batch.column(key) if key else None
                for i in range(batch.num_rows):
                    name = keys[i].as_py() if key else None
                    uri = uris(str(index)) if name is None else uris(_text(name))
                    if images is None:
                        yield Failure(uri, "read", "no_image", f"{uri}: {problem}")
                    elif not images[i].is_valid:
                        yield Failure(uri, "read", "no_image", f"{uri}: the image cell is null")
                    elif lengths[i].as_py() > max_bytes:
                        yield _too_large(uri, "the image cell", lengths[i].as_py(), max_bytes)
                    else:
                        yield Member(uri, images[i].as_py())
                    index += 1
        except (OSError, pa.ArrowException) as error:
            damage.append(f"row group {group}, rows {index}-{first + rows - 1}: {_one_line(error)}")
            lost += first + rows - index
        first += rows
    if damage:  # one row for the shard, after every row group that could be read
        message = f"{shard}: damaged: {'; '.join(damage)}; those {lost} row(s) not read, {first - lost} read"
        yield Failure(shard, "read", "damaged_shard", message)


def _image_column(schema: pa.Schema, image_field: str | None) -> tuple[str | None, str | None, str]:
    """The image column's name and the path to read from it, or None, None and why not."""
    names = (image_field,) if image_field else PARQUET_IMAGE_FIELDS
    name = next((n for n in names if n in schema.names), None)
    if name is None:
        return None, None, f"no column {_either(names)} (columns: {', '.join(schema.names)})"
    kind = schema.field(name).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return name, name, ""
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        child = kind.field("bytes").type
        if pa.types.is_binary(child) or pa.types.is_large_binary(child):
            return name, f"{name}.bytes", ""  # only the bytes, not the struct's other fields (path)
    return None, None, f"column {name!r} is {kind}, not binary or a struct with a binary 'bytes' field"


def _image_values(column: pa.Array) -> pa.Array:
    """Binary values; a struct's 'bytes' field, null where the struct is null."""
    return pc.struct_field(column, "bytes") if pa.types.is_struct(column.type) else column


def _text(value) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _either(names) -> str:
    return " or ".join(map(repr, names))


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # Arrow's messages span lines


# -- the launcher's look at the fields of a shard


def field_problem(fmt: str, handle, image_field: str | None, key_field: str | None) -> str | None:
    """What keeps a shard's fields from fitting --image_field/--key_field, or None.

    Judged by the schema (parquet: reliable, every row has the columns) or by the first
    sample or record (webdataset, tfrecord: samples need not be alike, so only fields a
    user named are checked there). A shard with no sample to judge by passes: its rows
    tell what is wrong with it.
    """
    if fmt == "parquet":
        return _parquet_field_problem(handle, image_field, key_field)
    if fmt == "tfrecord":
        names, what = _first_features(handle), "its first record has no feature"
    else:
        names, what = _first_suffixes(handle), "its first sample has no member with suffix"
    if not names:
        return None
    for flag, field in (("--image_field", image_field), ("--key_field", key_field)):
        if field is not None and field not in names:
            kinds = "features" if fmt == "tfrecord" else "members"
            return f"{what} {field!r} for {flag} ({kinds}: {', '.join(names)})"
    return None


def _parquet_field_problem(handle, image_field, key_field) -> str | None:
    try:
        schema = pq.ParquetFile(handle).schema_arrow
    except (OSError, pa.ArrowException):
        return None  # damaged: the job's rows say so, shard by shard
    columns = ", ".join(schema.names)
    for flag, field in (("--image_field", image_field), ("--key_field", key_field)):
        if field is not None and field not in schema.names:
            return f"no column {field!r} for {flag} (columns: {columns})"
    if image_field is None and not any(n in schema.names for n in PARQUET_IMAGE_FIELDS):
        return (
            f"none of the columns {_either(PARQUET_IMAGE_FIELDS)} that hold the image by default; "
            f"name it with --image_field (columns: {columns})"
        )
    name, _, problem = _image_column(schema, image_field)
    return None if name is not None else problem


def _first_features(handle) -> list[str] | None:
    try:
        record = TFRecordFrames(handle).read()
        features = _example_type().FromString(record).features.feature if record is not None else None
    except Exception:  # a damaged first record, or not an Example: the job's rows will say so
        return None
    return sorted(features) if features is not None else None


def _first_suffixes(handle, limit: int = 256) -> list[str] | None:
    """The suffixes of the tar's first sample (looking at no more than `limit` members)."""
    key, suffixes = None, []
    try:
        tar = tarfile.open(fileobj=handle, mode="r|*")
        for _ in range(limit):
            member = tar.next()
            if member is None:
                break
            tar.members.clear()
            name, suffix = _split_name(member.name) if member.isfile() else (None, None)
            if name is None:
                continue
            if key is not None and (name != key or suffix in suffixes):
                break
            key = name
            suffixes.append(suffix)
    except tarfile.TarError:
        pass  # damaged: judge by what was read before it, if anything
    return suffixes or None


# -- telling the formats apart by their first bytes


def is_tar(head: bytes) -> bool:
    """Whether a file's first block is a tar header (tarfile checks its checksum)."""
    try:
        tarfile.TarInfo.frombuf(head[: tarfile.BLOCKSIZE], tarfile.ENCODING, "surrogateescape")
    except tarfile.EOFHeaderError:
        return True  # an archive with no members: all zeros
    except tarfile.HeaderError:
        return False
    return True


def is_tfrecord(head: bytes) -> bool:
    """Whether the first record's length header passes its CRC (the data may go on past head)."""
    if len(head) < _FRAME_HEADER.size:
        return False
    _, length_crc = _FRAME_HEADER.unpack_from(head)
    return masked_crc32c(head[:8]) == length_crc
