"""pipeline.job.read.tfrecord's frame reader, on files tf.io.TFRecordWriter wrote and damaged copies."""

from __future__ import annotations

import gzip
import io
import struct

import pytest

from pipeline.job.read import formats, members, parquet, tfrecord, webdataset
from pipeline.job.read.tfrecord import (
    BadData,
    BadLength,
    FrameTooLarge,
    TFRecordFrames,
    TruncatedFrame,
    masked_crc32c,
)
from tests.modules import imported_modules
from tests.shards import write_tfrecord

# An empty record, one byte, every byte value, and one over the 1 MiB skip chunk.
RECORDS = [b"", b"x", bytes(range(256)), b"\xab" * (1 << 20 | 5)]


def offsets(records) -> list[int]:
    """Each frame is 8 (length) + 4 (its CRC) + data + 4 (the data's CRC) bytes."""
    at, starts = 0, []
    for record in records:
        starts.append(at)
        at += 16 + len(record)
    return [*starts, at]


def read_all(frames: TFRecordFrames) -> list:
    """Every record, or the class of the error where one raised, until the end or a fatal error."""
    items = []
    while True:
        try:
            record = frames.read()
        except (BadData, FrameTooLarge) as error:  # this record is lost; the next one is read
            items.append(type(error))
            continue
        except (TruncatedFrame, BadLength) as error:
            return [*items, type(error)]
        if record is None:
            return items
        items.append(record)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("tfrecord") / "r.tfrecord"
    write_tfrecord(path, RECORDS)
    return path.read_bytes()


def test_no_private_beam_api():
    # Beam's _TFRecordUtil is private: the framing is these few lines of our own.
    # The format readers import no Beam at all: they read an open handle.
    for module in (formats, members, parquet, tfrecord, webdataset):
        assert not any(name.startswith("apache_beam") for name in imported_modules(module)), module


def test_masked_crc32c_known_value():
    # CRC32C("123456789") is 0xE3069283 (the standard check value). Masked as TensorFlow
    # does: rotated right by 15 bits (0x1c60d | 0x25060000 = 0x2507c60d), plus 0xa282ead8,
    # modulo 2**32 (0xc78ab0e5).
    crc = 0xE3069283
    rotated = ((crc >> 15) | (crc << 17)) % 2**32
    assert rotated == 0x2507C60D
    assert masked_crc32c(b"123456789") == (rotated + 0xA282EAD8) % 2**32 == 0xC78AB0E5
    assert masked_crc32c(b"") == 0xA282EAD8  # CRC32C of nothing is 0: only the constant


def test_reads_what_tensorflow_wrote(written):
    assert len(written) == offsets(RECORDS)[-1]
    frames = TFRecordFrames(io.BytesIO(written))
    for record, start in zip(RECORDS, offsets(RECORDS)):
        assert frames.position == start
        assert frames.read() == record
    assert frames.read() is None and frames.position == len(written)


def test_reads_tensorflows_gzip(tmp_path):
    path = tmp_path / "r.tfrecord.gz"
    write_tfrecord(path, RECORDS, gzip=True)
    with gzip.open(path) as handle:
        assert read_all(TFRecordFrames(handle)) == RECORDS


class _Trickle(io.RawIOBase):
    """A stream whose every read returns at most 7 bytes, as a network stream may."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 7))


def test_short_reads_are_not_the_end(written):
    assert read_all(TFRecordFrames(_Trickle(written))) == RECORDS


def test_every_cut_inside_a_frame_is_truncated(written):
    starts = offsets(RECORDS[:3])  # the small records, to cut at every byte
    for cut in range(1, starts[-1]):
        whole = next(n for n, start in enumerate(starts) if start >= cut)
        expected = RECORDS[:whole] if cut in starts else [*RECORDS[: whole - 1], TruncatedFrame]
        assert read_all(TFRecordFrames(io.BytesIO(written[:cut]))) == expected, cut


def test_a_bad_data_crc_costs_only_its_record(written):
    damaged = bytearray(written)
    damaged[offsets(RECORDS)[2] + 12 + 100] ^= 0x01  # one bit of record 2's data
    frames = TFRecordFrames(io.BytesIO(bytes(damaged)))
    assert [frames.read(), frames.read()] == RECORDS[:2]
    with pytest.raises(BadData):
        frames.read()
    assert frames.position == offsets(RECORDS)[3]  # at the next frame, which reads whole
    assert frames.read() == RECORDS[3]


def test_a_bad_data_crc_field_is_bad_data(written):
    damaged = bytearray(written)
    damaged[offsets(RECORDS)[2] - 1] ^= 0x80  # the last byte of record 1's data CRC
    assert read_all(TFRecordFrames(io.BytesIO(bytes(damaged)))) == [RECORDS[0], BadData, *RECORDS[2:]]


@pytest.mark.parametrize("byte", range(12))
def test_a_damaged_header_loses_the_framing(written, byte):
    # Any flipped bit of the length or of its CRC: the length cannot be trusted, so nothing after it.
    damaged = bytearray(written)
    damaged[offsets(RECORDS)[1] + byte] ^= 0x10
    assert read_all(TFRecordFrames(io.BytesIO(bytes(damaged)))) == [RECORDS[0], BadLength]


def test_records_over_the_cap_are_skipped_unread(written):
    frames = TFRecordFrames(io.BytesIO(written), max_bytes=255)
    assert [frames.read(), frames.read()] == RECORDS[:2]
    with pytest.raises(FrameTooLarge) as caught:
        frames.read()
    assert caught.value.size == 256 and frames.position == offsets(RECORDS)[3]
    with pytest.raises(FrameTooLarge):
        frames.read()  # the 1 MiB record, skipped in chunks
    assert frames.read() is None
    # Cut inside a record being skipped: the file ends inside it.
    cut = TFRecordFrames(io.BytesIO(written[: offsets(RECORDS)[3] + 20]), max_bytes=10)
    assert read_all(cut) == [RECORDS[0], RECORDS[1], FrameTooLarge, TruncatedFrame]


def test_a_record_at_the_cap_is_read(written):
    assert read_all(TFRecordFrames(io.BytesIO(written), max_bytes=len(RECORDS[3]))) == RECORDS


def test_frames_of_our_own_making_match_tensorflows(written):
    # The framing spelled out: what TensorFlow wrote is exactly length, masked CRCs and data.
    ours = b"".join(
        struct.pack("<Q", len(r))
        + struct.pack("<I", masked_crc32c(struct.pack("<Q", len(r))))
        + r
        + struct.pack("<I", masked_crc32c(r))
        for r in RECORDS
    )
    assert ours == written


def test_looks_like_reads_the_first_header_only(written):
    # The data may go on past the head: 12 bytes (length and its CRC) are enough to tell.
    assert tfrecord.looks_like(written) and tfrecord.looks_like(written[:12])
    assert not tfrecord.looks_like(written[:11])
    assert not tfrecord.looks_like(b"")
    assert not tfrecord.looks_like(b"\x89PNG\r\n\x1a\n" + bytes(8))
    damaged = bytearray(written)
    damaged[3] ^= 0x01
    assert not tfrecord.looks_like(bytes(damaged))
