"""pipeline.job.read.shards: each member of a tar, TFRecord or Parquet shard is one item; damage is local."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import threading

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.contract import ERROR_TYPES, READ_ERROR_TYPES, error_row, image_id
from pipeline.job.decode import DecodeConfig, DecodeImage
from pipeline.job.read import shards
from pipeline.job.read.shards import Failure, Member, ReadShard, check_format, read_shard, sniff
from pipeline.storage import InputError
from tests.conftest import REPO
from tests.corpus import build_corpus
from tests.pipeline.faults import FaultyFileSystem, faulty
from tests.pipeline.servers import free_port, wait_listening
from tests.shards import (
    Repeated,
    example,
    tar_offsets,
    write_img2dataset,
    write_parquet,
    write_tar,
    write_tfrecord,
)

MB = 2**20


def read(uri, fmt, **kwargs) -> list:
    return list(read_shard(str(uri), fmt, sleep=lambda s: None, **kwargs))


def damaged(uri, message: str) -> Failure:
    return Failure(str(uri), "read", "damaged_shard", message)


def renamed(items: list, old: str, new: str) -> list:
    """The items with `old` replaced by `new` in their uri and message (the same shard elsewhere)."""
    return [type(i)(*(x.replace(old, new) if isinstance(x, str) else x for x in i)) for i in items]


@pytest.fixture(autouse=True)
def no_faults():
    FaultyFileSystem.reset()
    yield
    FaultyFileSystem.reset()


def test_shard_error_types_are_in_the_one_read_vocabulary():
    # Users filter errors rows on these strings: the shard formats add three names to the
    # read stage's vocabulary (pipeline.job.read.files, which the errors table's ERROR_TYPES holds).
    assert list(READ_ERROR_TYPES) == [
        "not_found",
        "permission_denied",
        "too_large",
        "read_error",
        "damaged_shard",
        "bad_record",
        "no_image",
        "not_a_file",
        "symlink_loop",
        "read_timeout",
    ]
    assert ERROR_TYPES["read"] == READ_ERROR_TYPES
    assert READ_ERROR_TYPES["too_large"].startswith("the file or shard member is over --max_input_bytes")
    assert all(meaning and "\n" not in meaning for meaning in READ_ERROR_TYPES.values())


# ------------------------------------------------------------------ webdataset

SAMPLES = [
    ("00000/000.jpg", b"image 000"),
    ("00000/000.json", b"{}"),
    ("00000/000.txt", b"a caption"),
    ("00000/001.txt", b"the image comes second"),
    ("00000/001.PNG", b"image 001"),
    ("00000/002.seg.png", b"mask 002"),
    ("00000/002.cls", b"3"),
    ("README", b"no dot: in no sample"),
    ("00000/003.webp", b"image 003"),
    ("00000/003.jpg", b"second image of 003"),
]


def test_webdataset_groups_members_by_key(tmp_path):
    shard = tmp_path / "shard-000.tar"
    write_tar(shard, SAMPLES)
    s = str(shard)
    assert read(shard, "webdataset") == [
        Member(f"{s}#00000/000", b"image 000"),  # json and txt are not images
        Member(f"{s}#00000/001", b"image 001"),  # PNG: the suffix is compared in lower case
        # "seg.png" is not an image extension: the suffix is all after the first dot
        Failure(
            f"{s}#00000/002",
            "read",
            "no_image",
            f"{s}#00000/002: no member with an image extension (members: seg.png, cls)",
        ),
        Member(f"{s}#00000/003", b"image 003"),  # the first image member in tar order
    ]


def test_webdataset_image_field_picks_the_member(tmp_path):
    shard = tmp_path / "shard.tar"
    write_tar(shard, SAMPLES)
    items = read(shard, "webdataset", image_field="seg.png")
    # Only sample 002 has a seg.png; each of the other three is one no_image row.
    assert [(i.uri.split("#")[1], type(i).__name__) for i in items] == [
        ("00000/000", "Failure"),
        ("00000/001", "Failure"),
        ("00000/002", "Member"),
        ("00000/003", "Failure"),
    ]
    assert items[2].data == b"mask 002"
    assert items[0].message == f"{shard}#00000/000: no member with suffix 'seg.png' (members: jpg, json, txt)"


@pytest.mark.parametrize("name", ["shard.tar.gz", "shard.tgz"])
def test_webdataset_gzip_shards(tmp_path, name):
    write_tar(tmp_path / "plain.tar", SAMPLES)
    write_tar(tmp_path / name, SAMPLES)
    with open(tmp_path / name, "rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"  # really gzip
    plain = read(tmp_path / "plain.tar", "webdataset")
    zipped = read(tmp_path / name, "webdataset")
    assert renamed(zipped, name, "plain.tar") == plain


def test_duplicate_keys_are_all_kept_and_told_apart(tmp_path):
    shard = tmp_path / "dup.tar"
    write_tar(
        shard,
        [
            ("a.jpg", b"1"),
            ("b.jpg", b"2"),
            ("a.jpg", b"3"),
            ("c.jpg", b"4"),
            ("c.jpg", b"5"),
            ("a#2.jpg", b"6"),
        ],
    )
    s = str(shard)
    expected = [
        Member(f"{s}#a", b"1"),
        Member(f"{s}#b", b"2"),
        Member(f"{s}#a#2", b"3"),  # key a again: the first free #n, n >= 2
        Member(f"{s}#c", b"4"),
        Member(f"{s}#c#2", b"5"),  # c.jpg right after c.jpg: a second sample, not one with two jpgs
        Member(f"{s}#a#2#2", b"6"),  # the real key "a#2" was given out already: #2 appended to it
    ]
    assert read(shard, "webdataset") == expected
    assert read(shard, "webdataset") == expected  # stable across runs


MEMBERS = [
    ("000.jpg", b"x" * 1000),
    ("000.json", b"{}"),
    ("001.jpg", b"y" * 600),
    ("001.json", b"{}"),
    ("002.jpg", b"z" * 10),
]
# tar_offsets: 512-byte header + data padded to 512: headers at 0, 1536, 2560, 4096, 5120.
OFFSETS = tar_offsets(len(d) for _, d in MEMBERS)


def test_tar_layout_the_damage_tests_assume(tmp_path):
    write_tar(tmp_path / "s.tar", MEMBERS)
    with tarfile.open(tmp_path / "s.tar") as tar:
        assert [m.offset for m in tar.getmembers()] == OFFSETS == [0, 1536, 2560, 4096, 5120]


@pytest.mark.parametrize(
    ("cut", "read_before", "where_and_what"),
    [
        # Inside 000.jpg's data (bytes 512-1511): nothing complete before it.
        (1000, 0, "in member '000.jpg' (data from byte 512 of the tar stream): unexpected end of data"),
        # Exactly after 000.json: tarfile alone would take this for the archive's end.
        (
            2560,
            1,
            "at byte 2560 of the tar stream, after member '000.json': "
            "the file ends there, without the end-of-archive marker (truncated)",
        ),
        # Inside 001.jpg's header.
        (
            2700,
            1,
            "at byte 2560 of the tar stream, after member '000.json': "
            "the file ends inside a header (truncated)",
        ),
        # Inside 001.json's data (4608-4609): 001's image was read whole, so it is kept.
        (4609, 2, "at byte 5120 of the tar stream, after member '001.json': unexpected end of data"),
    ],
)
def test_truncated_tar_keeps_the_samples_before_the_damage(tmp_path, cut, read_before, where_and_what):
    write_tar(tmp_path / "full.tar", MEMBERS)
    shard = tmp_path / "cut.tar"
    shard.write_bytes((tmp_path / "full.tar").read_bytes()[:cut])
    s = str(shard)
    good = [Member(f"{s}#000", b"x" * 1000), Member(f"{s}#001", b"y" * 600)]
    message = f"{s}: damaged {where_and_what}; {read_before} sample(s) read before it, the rest not read"
    assert read(shard, "webdataset") == good[:read_before] + [damaged(shard, message)]


def test_garbled_tar_header_is_damage_not_the_end(tmp_path):
    write_tar(tmp_path / "full.tar", MEMBERS)
    data = bytearray((tmp_path / "full.tar").read_bytes())
    data[OFFSETS[2] : OFFSETS[2] + 8] = b"garbage!"  # 001.jpg's header no longer sums right
    shard = tmp_path / "garbled.tar"
    shard.write_bytes(bytes(data))
    s = str(shard)
    message = (
        f"{s}: damaged at byte 2560 of the tar stream, after member '000.json': "
        "invalid header (bad checksum); "
        "1 sample(s) read before it, the rest not read"
    )
    assert read(shard, "webdataset") == [Member(f"{s}#000", b"x" * 1000), damaged(shard, message)]


def test_truncated_gzip_tar(tmp_path):
    rng = np.random.default_rng(0)
    members = [(f"{i:03d}.jpg", rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()) for i in range(5)]
    write_tar(tmp_path / "full.tgz", members)
    full = (tmp_path / "full.tgz").read_bytes()
    shard = tmp_path / "cut.tgz"
    shard.write_bytes(full[: len(full) // 2])
    items = read(shard, "webdataset")
    s = str(shard)
    # A member takes 512 + 20,480 bytes of tar; random bytes barely compress, so half the
    # file holds ~52,500 tar bytes: 000 and 001 (to byte 41,984) whole, 002 cut.
    assert items[:2] == [Member(f"{s}#000", members[0][1]), Member(f"{s}#001", members[1][1])]
    assert len(items) == 3 and (items[2].uri, items[2].error_type) == (s, "damaged_shard")
    assert "of the uncompressed tar stream (the file is gz)" in items[2].message
    assert items[2].message.endswith("; 2 sample(s) read before it, the rest not read")


def test_member_over_max_bytes_is_refused_unread(tmp_path):
    shard = tmp_path / "s.tar"
    write_tar(shard, MEMBERS)
    s = str(shard)
    # 000.jpg is 1000 bytes: over 999, refused; at exactly 1000 it is read.
    too_large = Failure(
        f"{s}#000",
        "read",
        "too_large",
        f"{s}#000: member '000.jpg' is 1000 bytes, over 999 (--max_input_bytes); not read",
    )
    assert read(shard, "webdataset", max_bytes=999) == [
        too_large,
        Member(f"{s}#001", b"y" * 600),
        Member(f"{s}#002", b"z" * 10),
    ]
    assert read(shard, "webdataset", max_bytes=1000)[0] == Member(f"{s}#000", b"x" * 1000)


def test_empty_file_and_empty_archive(tmp_path):
    (tmp_path / "zero.tar").write_bytes(b"")
    with tarfile.open(tmp_path / "no_members.tar", "w"):
        pass  # the end-of-archive blocks only
    zero = tmp_path / "zero.tar"
    message = f"{zero}: damaged at byte 0: empty file; 0 sample(s) read before it, the rest not read"
    assert read(tmp_path / "zero.tar", "webdataset") == [damaged(tmp_path / "zero.tar", message)]
    assert read(tmp_path / "no_members.tar", "webdataset") == []


# ------------------------------------------------------------------ tfrecord


def record_offsets(records) -> list[int]:
    """Each record is framed as 8 (length) + 4 (its CRC) + data + 4 (data CRC) bytes."""
    offsets, at = [], 0
    for record in records:
        offsets.append(at)
        at += 16 + len(record)
    return offsets


@pytest.fixture(scope="module")
def records():
    return [
        example({"image/encoded": b"image 0", "image/class/label": 1}),
        example({"jpg": b"jpg 1", "image": b"image 1"}),  # "image" comes before "jpg"
        example({"jpg": b"jpg 2", "key": b"k2"}),
        example({"label": 3}),
        example({"image/encoded": 4, "key": 4}),  # an int, not bytes
        example({"image": b"image 5", "key": b"k2"}),  # the key k2 again
    ]


def test_tfrecord_default_image_feature_and_index_keys(tmp_path, records):
    shard = tmp_path / "train.tfrecord-00000-of-00001"
    write_tfrecord(shard, records)
    s = str(shard)
    assert read(shard, "tfrecord") == [
        Member(f"{s}#0", b"image 0"),
        Member(f"{s}#1", b"image 1"),
        Member(f"{s}#2", b"jpg 2"),
        Failure(
            f"{s}#3",
            "read",
            "no_image",
            f"{s}#3: no feature 'image/encoded' or 'image' or 'jpg' (features: label)",
        ),
        Failure(f"{s}#4", "read", "no_image", f"{s}#4: feature 'image/encoded' holds no bytes"),
        Member(f"{s}#5", b"image 5"),
    ]


def test_tfrecord_key_field_and_image_field(tmp_path, records):
    shard = tmp_path / "r.tfrecord"
    write_tfrecord(shard, records)
    s = str(shard)
    items = read(shard, "tfrecord", key_field="key", image_field="jpg")
    # No key: the index; an int key as decimal; k2 again: #2. Only records 1 and 2 have a jpg.
    assert [i.uri for i in items] == [f"{s}#0", f"{s}#1", f"{s}#k2", f"{s}#3", f"{s}#4", f"{s}#k2#2"]
    assert [type(i).__name__ for i in items] == [
        "Failure",
        "Member",
        "Member",
        "Failure",
        "Failure",
        "Failure",
    ]
    assert items[1].data == b"jpg 1"


def test_tfrecord_index_and_key_never_share_a_uri(tmp_path):
    shard = tmp_path / "r.tfrecord"
    write_tfrecord(shard, [example({"key": b"1", "image": b"a"}), example({"image": b"b"})])
    s = str(shard)
    # Record 1 has no key: its index, 1, is taken by record 0's key.
    assert read(shard, "tfrecord", key_field="key") == [Member(f"{s}#1", b"a"), Member(f"{s}#1#2", b"b")]


def test_tfrecord_bad_crc_costs_one_record(tmp_path, records):
    write_tfrecord(tmp_path / "good.tfrecord", records)
    data = bytearray((tmp_path / "good.tfrecord").read_bytes())
    at = record_offsets(records)[1]
    data[at + 12 + 3] ^= 0xFF  # a byte of record 1's data: its length still frames it
    shard = tmp_path / "crc.tfrecord"
    shard.write_bytes(bytes(data))
    s = str(shard)
    message = f"{s}#1: record 1 (byte {at}): its data fails its checksum (CRC)"
    items = read(shard, "tfrecord")
    assert items[1] == Failure(f"{s}#1", "read", "bad_record", message)
    assert [i.uri for i in items] == [f"{s}#{n}" for n in range(6)]  # every other record read
    assert items[5] == Member(f"{s}#5", b"image 5")


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        ("length", "its length fails its checksum (CRC)"),  # framing lost: nothing after is trusted
        ("cut_header", "the file ends inside it"),
        ("cut_data", "the file ends inside it"),
    ],
)
def test_tfrecord_damage_keeps_the_records_before(tmp_path, records, damage, what):
    write_tfrecord(tmp_path / "good.tfrecord", records)
    data = bytearray((tmp_path / "good.tfrecord").read_bytes())
    at = record_offsets(records)[2]
    if damage == "length":
        data[at + 1] ^= 0xFF
    else:
        data = data[: at + (5 if damage == "cut_header" else 20)]
    shard = tmp_path / "damaged.tfrecord"
    shard.write_bytes(bytes(data))
    s = str(shard)
    message = (
        f"{s}: damaged in record 2 (at byte {at}): {what}; 2 record(s) read before it, the rest not read"
    )
    assert read(shard, "tfrecord") == [
        Member(f"{s}#0", b"image 0"),
        Member(f"{s}#1", b"image 1"),
        damaged(shard, message),
    ]


def test_tfrecord_record_not_an_example_and_too_large(tmp_path):
    shard = tmp_path / "r.tfrecord"
    big = example({"image": b"b" * 5000})
    write_tfrecord(shard, [b"\xff\xff\xff not a protobuf", big, example({"image": b"ok"})])
    s = str(shard)
    items = read(shard, "tfrecord", max_bytes=4096)
    assert items[0].error_type == "bad_record"
    assert items[0].message.startswith(f"{s}#0: not a tf.train.Example: ")
    # The record (not only the image in it) is what is measured against max_bytes.
    too_large = f"{s}#1: record 1 is {len(big)} bytes, over 4096 (--max_input_bytes); not read"
    assert items[1:] == [Failure(f"{s}#1", "read", "too_large", too_large), Member(f"{s}#2", b"ok")]


def test_tfrecord_gzip(tmp_path, records):
    write_tfrecord(tmp_path / "r.tfrecord", records)
    write_tfrecord(tmp_path / "r.tfrecord.gz", records, gzip=True)
    plain = read(tmp_path / "r.tfrecord", "tfrecord")
    zipped = read(tmp_path / "r.tfrecord.gz", "tfrecord")
    assert [i.uri.replace(".gz", "") for i in zipped] == [i.uri for i in plain]
    assert [i.data for i in zipped if isinstance(i, Member)] == [
        i.data for i in plain if isinstance(i, Member)
    ]


@pytest.mark.parametrize("cut", ["in the gzip header", "mid-stream", "in the gzip trailer"])
def test_truncated_gzip_tfrecord_is_damage_not_fewer_records(tmp_path, records, cut):
    # A gzip stream cut short must say so: cut in its header it would otherwise read as a
    # shard of no records, cut at the end of a record as a shard of fewer, with no row.
    write_tfrecord(tmp_path / "full.tfrecord.gz", records, gzip=True)
    data = (tmp_path / "full.tfrecord.gz").read_bytes()
    at = {"in the gzip header": 6, "mid-stream": len(data) // 2, "in the gzip trailer": len(data) - 4}[cut]
    shard = tmp_path / "r.tfrecord.gz"
    shard.write_bytes(data[:at])
    *before, last = read(shard, "tfrecord")
    assert (last.uri, last.error_type) == (str(shard), "damaged_shard")
    assert "corrupt gzip data: " in last.message
    # The records before the damage are the whole shard's first ones.
    whole = renamed(read(tmp_path / "full.tfrecord.gz", "tfrecord"), "full.", "r.")
    assert before == whole[: len(before)]
    if cut == "in the gzip trailer":  # every record was read: only the end-of-stream marker is gone
        assert before == whole


# ------------------------------------------------------------------ parquet


def test_parquet_img2dataset_layout(tmp_path):
    shard = tmp_path / "00000.parquet"
    groups = [
        {"key": ["000000000", "000000001"], "jpg": [b"photo 0", None], "caption": ["a", "b"]},
        {"key": ["000000002", None], "jpg": [b"photo 2", b"photo 3"], "caption": ["c", "d"]},
    ]
    write_parquet(shard, groups)
    s = str(shard)
    assert read(shard, "parquet", key_field="key") == [
        Member(f"{s}#000000000", b"photo 0"),
        Failure(f"{s}#000000001", "read", "no_image", f"{s}#000000001: the image cell is null"),
        Member(f"{s}#000000002", b"photo 2"),
        Member(f"{s}#3", b"photo 3"),  # a null key: the row's index in the file
    ]
    # Without key_field, each row's index, counted across row groups.
    assert [i.uri for i in read(shard, "parquet")] == [f"{s}#{n}" for n in range(4)]


def test_parquet_struct_with_bytes_as_hugging_face_writes(tmp_path):
    shard = tmp_path / "train-00000-of-00001.parquet"
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": b"png 0", "path": "0.png"}, None, {"bytes": None, "path": "2.png"}]
    write_parquet(shard, [pa.table({"image": pa.array(cells, image), "label": [7, 8, 9]})])
    s = str(shard)
    assert read(shard, "parquet") == [
        Member(f"{s}#0", b"png 0"),
        Failure(f"{s}#1", "read", "no_image", f"{s}#1: the image cell is null"),  # a null struct
        Failure(f"{s}#2", "read", "no_image", f"{s}#2: the image cell is null"),  # null bytes in it
    ]
    # Only the bytes are read, not the struct's path (nor the label).
    assert pq.ParquetFile(shard).schema_arrow.names == ["image", "label"]


def test_parquet_default_column_order_and_image_field(tmp_path):
    shard = tmp_path / "p.parquet"
    write_parquet(shard, [{"image_bytes": [b"c"], "image": [b"b"], "title": ["t"]}])
    s = str(shard)
    assert read(shard, "parquet") == [Member(f"{s}#0", b"b")]  # jpg, image, image_bytes: image first
    assert read(shard, "parquet", image_field="image_bytes") == [Member(f"{s}#0", b"c")]
    text = f"{s}#0: column 'title' is string, not binary or a struct with a binary 'bytes' field"
    assert read(shard, "parquet", image_field="title") == [Failure(f"{s}#0", "read", "no_image", text)]


def test_parquet_without_an_image_column_is_a_row_per_row(tmp_path):
    shard = tmp_path / "captions.parquet"
    write_parquet(shard, [{"key": ["a", "b"], "caption": ["x", "y"]}])
    s = str(shard)
    missing = "no column 'jpg' or 'image' or 'image_bytes' (columns: key, caption)"
    assert read(shard, "parquet", key_field="key") == [
        Failure(f"{s}#a", "read", "no_image", f"{s}#a: {missing}"),
        Failure(f"{s}#b", "read", "no_image", f"{s}#b: {missing}"),
    ]
    # With no column to read at all, the row count still gives a row per row.
    assert [i.uri for i in read(shard, "parquet")] == [f"{s}#0", f"{s}#1"]


def test_parquet_duplicate_keys(tmp_path):
    shard = tmp_path / "p.parquet"
    write_parquet(shard, [{"key": ["x", "x", None, "2"], "jpg": [b"0", b"1", b"2", b"3"]}])
    s = str(shard)
    assert [i.uri for i in read(shard, "parquet", key_field="key")] == [
        f"{s}#x",
        f"{s}#x#2",
        f"{s}#2",
        f"{s}#2#2",
    ]


def test_parquet_column_names_with_dots(tmp_path):
    shard = tmp_path / "p.parquet"
    write_parquet(shard, [{"img.data": [b"x"], "id.str": ["k"]}])
    # A dot in a name is part of the name, not a path into a struct.
    assert read(shard, "parquet", image_field="img.data", key_field="id.str") == [Member(f"{shard}#k", b"x")]


def test_parquet_cell_over_max_bytes(tmp_path):
    shard = tmp_path / "p.parquet"
    write_parquet(shard, [{"jpg": [b"a" * 101, b"b" * 100]}])
    s = str(shard)
    message = f"{s}#0: the image cell is 101 bytes, over 100 (--max_input_bytes); not read"
    assert read(shard, "parquet", max_bytes=100) == [
        Failure(f"{s}#0", "read", "too_large", message),
        Member(f"{s}#1", b"b" * 100),
    ]


def test_parquet_damaged_row_group_costs_only_its_rows(tmp_path):
    good = tmp_path / "good.parquet"
    write_parquet(good, [{"jpg": [bytes([g]) * 1000] * 3} for g in range(3)])
    chunk = pq.ParquetFile(good).metadata.row_group(1).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(good.read_bytes())
    data[start : start + 8] = b"\xff" * 8  # row group 1's first page header: unreadable
    shard = tmp_path / "damaged.parquet"
    shard.write_bytes(bytes(data))
    s = str(shard)
    items = read(shard, "parquet")
    # Rows 0-2 and 6-8 read; one row for the shard says which rows were lost.
    assert items[:-1] == [Member(f"{s}#{n}", bytes([n // 3]) * 1000) for n in (0, 1, 2, 6, 7, 8)]
    assert items[-1].uri == s and items[-1].error_type == "damaged_shard"
    assert items[-1].message.startswith(f"{s}: damaged: row group 1, rows 3-5: ")
    assert items[-1].message.endswith("; those 3 row(s) not read, 6 read")


def test_truncated_parquet_has_no_footer(tmp_path):
    write_parquet(tmp_path / "good.parquet", [{"jpg": [b"x" * 1000] * 3}])
    shard = tmp_path / "cut.parquet"
    shard.write_bytes((tmp_path / "good.parquet").read_bytes()[:2000])
    (item,) = read(shard, "parquet")
    assert item.uri == str(shard) and item.error_type == "damaged_shard"
    assert item.message.startswith(f"{shard}: damaged: not a readable Parquet file (")
    assert item.message.endswith("); no row read")


# ------------------------------------------------------------------ the shard as a whole


@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_shard_that_cannot_be_opened_is_one_row(tmp_path, fmt):
    missing = tmp_path / "missing"
    message = f"{missing}: reading failed before any member: [Errno 2] No such file or directory: '{missing}'"
    assert read(missing, fmt) == [Failure(str(missing), "read", "not_found", message)]
    FaultyFileSystem.faults[str(missing)] = ("permission", 0)
    (item,) = read(faulty(missing), fmt)
    assert (item.uri, item.error_type) == (faulty(missing), "permission_denied")


def test_transient_failures_are_retried(tmp_path):
    shard = tmp_path / "s.tar"
    write_tar(shard, MEMBERS)
    slept = []
    FaultyFileSystem.faults[str(shard)] = ("transient", 2)
    items = list(read_shard(faulty(shard), "webdataset", sleep=slept.append))
    assert [i.uri for i in items] == [f"{faulty(shard)}#{n:03d}" for n in range(3)]
    # Two dropped connections, two waits doubling from 0.5 s (each at random up to half
    # shorter: jitter), the third open reads it all.
    assert len(slept) == 2 and 0.25 <= slept[0] <= 0.5 and 0.5 <= slept[1] <= 1.0, slept
    assert FaultyFileSystem.opens[str(shard)] == 3
    FaultyFileSystem.faults[str(shard)] = ("always", 0)
    (item,) = read(faulty(shard), "webdataset")
    assert item == Failure(
        faulty(shard),
        "read",
        "read_error",
        f"{faulty(shard)}: reading failed before any member (tried 4 times): "
        "[Errno 104] injected: connection reset by peer",
    )


class _DropsAfter(io.RawIOBase):
    """A local file whose reads fail past `limit` bytes, as a connection dropped mid-shard."""

    def __init__(self, path, limit):
        self._file, self._limit = open(path, "rb"), limit

    def readable(self):
        return True

    def readinto(self, buffer):
        if self._file.tell() >= self._limit:
            raise ConnectionResetError(errno.ECONNRESET, "injected: connection reset mid-shard")
        data = self._file.read(min(len(buffer), self._limit - self._file.tell()))
        buffer[: len(data)] = data
        return len(data)

    def close(self):
        self._file.close()
        super().close()


def test_a_retry_mid_shard_yields_no_member_twice(tmp_path, monkeypatch):
    # Through faulty:// (tests/pipeline/faults.py), which Beam's FileSystems.open serves: local
    # paths are opened by pipeline.storage itself, after a look at what they are.
    shard = faulty(tmp_path / "s.tar")
    # Six samples of 8 KiB + a 512-byte header each: sample n's data ends at 8704 * (n + 1).
    write_tar(tmp_path / "s.tar", [(f"{n:03d}.jpg", bytes([n]) * 8192) for n in range(6)])
    expected = read(shard, "webdataset")
    items, yielded_at_reopen = [], []
    real_open = FileSystems.open

    def open_drops_once(uri, compression_type):
        if yielded_at_reopen or items:
            yielded_at_reopen.append(len(items))
            return real_open(uri, compression_type=compression_type)
        yielded_at_reopen.append(None)
        # tarfile reads 10 KiB at a time: the first two reads (20 KiB) hold samples 000 and
        # 001 whole; the third, up to 30 KiB, fails at 3 * 8704.
        return io.BufferedReader(_DropsAfter(FaultyFileSystem.local(uri), 3 * 8704), 512)

    monkeypatch.setattr(FileSystems, "open", open_drops_once)
    for item in read_shard(str(shard), "webdataset", sleep=lambda s: None):
        items.append(item)
    assert yielded_at_reopen == [None, 2]  # two members out before the drop, then one reopen
    assert items == expected  # 000 and 001 passed over on the reopen: none twice, none lost
    assert [i.uri for i in items] == [f"{shard}#{n:03d}" for n in range(6)]


@pytest.fixture
def bucket():
    """A moto S3 server on 127.0.0.1 with bucket "shards", Beam's filesystems pointed at it; stopped after."""
    import boto3
    import moto.server as moto_server
    from apache_beam.options.pipeline_options import PipelineOptions

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        wait_listening(port, timeout_s=30, what="moto's S3 server")
        endpoint, key, secret = f"http://127.0.0.1:{port}", "AKIATESTSHARDS", "not-a-secret"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )
        client.create_bucket(Bucket="shards")
        flags = [f"--s3_endpoint_url={endpoint}", "--s3_region_name=us-east-1"]
        flags += [f"--s3_access_key_id={key}", f"--s3_secret_access_key={secret}"]
        FileSystems.set_options(PipelineOptions(flags))
        yield client
    finally:
        FileSystems.set_options(None)
        server.stop()


def test_shards_stream_from_s3(tmp_path, bucket, records):
    # Each format read from the bucket gives what it gives locally (Parquet seeks: footer first).
    write_tar(tmp_path / "a.tgz", SAMPLES)
    write_tfrecord(tmp_path / "a.tfrecord", records)
    groups = [{"key": ["k0", "k1"], "jpg": [b"0", b"1"]}, {"key": ["k2"], "jpg": [b"2"]}]
    write_parquet(tmp_path / "a.parquet", groups)
    for name, fmt in [("a.tgz", "webdataset"), ("a.tfrecord", "tfrecord"), ("a.parquet", "parquet")]:
        bucket.put_object(Bucket="shards", Key=f"train/{name}", Body=(tmp_path / name).read_bytes())
        local, remote = str(tmp_path / name), f"s3://shards/train/{name}"
        expected = renamed(read(local, fmt, key_field="key"), local, remote)
        assert read(remote, fmt, key_field="key") == expected
        assert sniff(remote) == fmt
    (item,) = read("s3://shards/train/missing.tar", "webdataset")
    assert (item.uri, item.error_type) == ("s3://shards/train/missing.tar", "not_found")


# ------------------------------------------------------------------ formats by their first bytes


@pytest.fixture(scope="module")
def one_of_each(tmp_path_factory, records):
    folder = tmp_path_factory.mktemp("formats")
    write_tar(folder / "a.tar", MEMBERS)
    write_tar(folder / "a.tgz", MEMBERS)
    write_tfrecord(folder / "a.tfrecord", records)
    write_tfrecord(folder / "a.tfrecord.gz", records, gzip=True)
    write_tfrecord(folder / "gzip_without_gz.tfrecord", records, gzip=True)
    write_parquet(folder / "a.parquet", [{"jpg": [b"x"]}])
    (folder / "empty").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.tar", "webdataset"),
        ("a.tgz", "webdataset"),
        ("a.tfrecord", "tfrecord"),
        ("a.tfrecord.gz", "tfrecord"),
        ("gzip_without_gz.tfrecord", None),  # Beam would not decompress it: not readable as named
        ("a.parquet", "parquet"),
        ("empty", None),
    ],
)
def test_sniff(one_of_each, name, fmt):
    assert sniff(str(one_of_each / name)) == fmt


def test_sniff_a_photo(sample_photos):
    assert [sniff(str(p)) for p in sample_photos] == [None] * len(sample_photos)


def test_check_format_says_what_the_file_looks_like(one_of_each, sample_photos):
    check_format(str(one_of_each / "a.tgz"), "webdataset")  # passes
    parquet = one_of_each / "a.parquet"
    with pytest.raises(InputError) as info:  # a usage error: the launcher's one `error:` line
        check_format(str(parquet), "webdataset")
    assert str(info.value) == (
        f"--input_format webdataset: {parquet} does not look like a tar archive (WebDataset shard); "
        "it looks like a Parquet file: pass --input_format parquet."
    )
    photo = sample_photos[0]
    with pytest.raises(InputError) as info:
        check_format(str(photo), "tfrecord")
    first = photo.read_bytes()[:8].hex(" ")  # a JPEG's or PNG's signature
    assert str(info.value) == (
        f"--input_format tfrecord: {photo} does not look like a TFRecord file; "
        f"its first bytes ({first}) are none of the shard formats'."
    )
    with pytest.raises(InputError, match=r"does not look like a Parquet file; it is empty\.$"):
        check_format(str(one_of_each / "empty"), "parquet")
    with pytest.raises(InputError, match=r"missing cannot be read: "):
        check_format(str(one_of_each / "missing"), "parquet")
    with pytest.raises(ValueError, match=r"Received: fmt='files'"):  # a programming error
        check_format(str(parquet), "files")


# ------------------------------------------------------------------ the launcher's look at the listing


def launcher_check(*, patterns=(), input_list=None, fmt="webdataset") -> None:
    shards.check_inputs(
        shards.InputConfig(patterns=tuple(map(str, patterns)), input_list=input_list, format=fmt)
    )


def listing(folder, names) -> str:
    """A --input_list file naming folder's files (as faulty:// URIs, so opens are counted), in this order."""
    path = folder / "shards.txt"
    path.write_text("".join(f"{faulty(folder / name)}\n" for name in names))
    return str(path)


def test_damaged_or_stray_files_before_a_good_shard_are_left_to_the_job(tmp_path, caplog):
    # As a pattern or list may give them: shards damaged where a header would be (empty,
    # garbage), a file that is no tar at all, then a good tar. The launcher opens the files
    # named like tars, once each, in order, up to the good one (the .parquet is not even
    # opened), and passes with a warning: each is an errors row in the job, as it would be
    # anywhere else in the inputs.
    (tmp_path / "0-empty.tar").write_bytes(b"")
    (tmp_path / "1-garbage.tar").write_bytes(np.random.default_rng(0).bytes(4096))
    write_parquet(tmp_path / "2-meta.parquet", [{"key": ["000"], "url": ["https://example.com/0.jpg"]}])
    write_tar(tmp_path / "3-good.tar", MEMBERS)
    write_tar(tmp_path / "4-next.tar", MEMBERS)
    names = ["0-empty.tar", "1-garbage.tar", "2-meta.parquet", "3-good.tar", "4-next.tar"]
    listed = listing(tmp_path, names)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        launcher_check(input_list=listed)
    opened = ["0-empty.tar", "1-garbage.tar", "3-good.tar"]
    assert FaultyFileSystem.opens == {str(tmp_path / name): 1 for name in opened}
    assert [r.getMessage() for r in caplog.records] == [
        f"--input_format webdataset: {faulty(tmp_path / '0-empty.tar')} does not look like a tar archive "
        f"(WebDataset shard): it is empty; nor does 1 more of the files --input_list {listed!r} names; "
        "the job gives each such file an errors row."
    ]
    # A file that cannot be read is the job's row too (not_found, permission_denied).
    FaultyFileSystem.faults[str(tmp_path / "0-empty.tar")] = ("permission", 0)
    launcher_check(input_list=listing(tmp_path, ["0-empty.tar", "gone.tar", "3-good.tar"]))
    # Alone, each is what the user must hear about: one line, and nothing is submitted.
    FaultyFileSystem.reset()
    for name, problem in [
        ("0-empty.tar", "; it is empty."),
        ("1-garbage.tar", f"; its first bytes ({(tmp_path / '1-garbage.tar').read_bytes()[:8].hex(' ')}) "),
        ("gone.tar", "gone.tar cannot be read: "),
    ]:
        with pytest.raises(InputError, match=re.escape(problem)):
            launcher_check(input_list=listing(tmp_path, [name]))


def test_refused_when_none_of_the_files_opened_looks_like_the_format(tmp_path, sample_photos):
    # A wrong --input_format: the message names a file that says what to pass instead.
    (tmp_path / "photo.jpg").write_bytes(sample_photos[0].read_bytes())
    for name in ("a.parquet", "b.parquet"):
        write_parquet(tmp_path / name, [{"jpg": [b"x"]}])
    listed = listing(tmp_path, ["photo.jpg", "a.parquet", "b.parquet"])
    with pytest.raises(InputError) as error:
        launcher_check(input_list=listed)
    assert str(error.value) == (
        f"--input_format webdataset: {faulty(tmp_path / 'a.parquet')} does not look like a tar archive "
        f"(WebDataset shard), nor do 2 more of the files --input_list {listed!r} names; "
        "it looks like a Parquet file: pass --input_format parquet."
    )
    # It opens at most SAMPLE_OPENS of them: a tar after those, named like none, is not seen.
    FaultyFileSystem.reset()
    photos = [f"{i:02d}.jpg" for i in range(shards.SAMPLE_OPENS + 2)]
    for name in photos:
        (tmp_path / name).write_bytes(sample_photos[0].read_bytes())
    write_tar(tmp_path / "good", MEMBERS)
    with pytest.raises(InputError, match=f"nor do {shards.SAMPLE_OPENS - 1} more of the files"):
        launcher_check(input_list=listing(tmp_path, [*photos, "good"]))
    assert sorted(FaultyFileSystem.opens) == [str(tmp_path / n) for n in photos[: shards.SAMPLE_OPENS]]
    # Files named like the format's shards are opened first, wherever they are listed.
    FaultyFileSystem.reset()
    (tmp_path / "good").rename(tmp_path / "good.tar")
    launcher_check(input_list=listing(tmp_path, [*photos, "good.tar"]))
    assert FaultyFileSystem.opens == {str(tmp_path / "good.tar"): 1}


def test_a_fifo_among_the_files_is_never_opened(tmp_path):
    # Opening a FIFO blocks until a writer comes: the launcher looks at what a name is first.
    fifo = tmp_path / "0-fifo.tar"
    os.mkfifo(fifo)
    write_tar(tmp_path / "1-good.tar", MEMBERS)
    done = []
    check = threading.Thread(
        target=lambda: done.append(
            shards.check_sample([str(fifo), str(tmp_path / "1-good.tar")], "webdataset", "x")
        ),
        daemon=True,
    )
    check.start()
    check.join(timeout=30)  # the check takes milliseconds; blocked in open(), it would never end
    blocked = check.is_alive()
    if blocked:  # a writer (opening without blocking) releases it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        check.join(timeout=30)
    assert not blocked, "the launcher opened the FIFO"
    assert done == [str(tmp_path / "1-good.tar")]
    with pytest.raises(InputError, match=r"0-fifo.tar cannot be read: not a regular file"):
        shards.check_sample([str(fifo)], "webdataset", "x")


def test_an_img2dataset_folder(tmp_path, caplog):
    # img2dataset's --output_format webdataset: per shard a tar, a .parquet of metadata and a
    # _stats.json. `*` matches all three: the launcher opens a tar (named like one) and says
    # which pattern would match the shards only; the others are the job's errors rows.
    folder = tmp_path / "laion"
    write_img2dataset(folder, [[b"jpeg 0", None, b"jpeg 2"]])
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        launcher_check(patterns=[faulty(folder) + "/*"])
    assert FaultyFileSystem.opens == {str(folder / "00000.tar"): 1}
    hint = (
        f"({faulty(folder)} is an img2dataset output folder: beside its .tar shards it holds metadata files, "
        "each of which would be a damaged_shard errors row; to read only its shards, pass "
        f"--input '{faulty(folder)}/*.tar')"
    )
    assert [r.getMessage() for r in caplog.records] == [
        f"--input_format webdataset: the files --input '{faulty(folder)}/*' matches are not all shards "
        f"{hint}."
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        launcher_check(patterns=[folder / "*.tar"])
    assert caplog.records == []
    # Another format asked for: the message names the tar and the pattern to pass.
    with pytest.raises(InputError) as error:
        launcher_check(patterns=[folder / "*"], fmt="tfrecord")
    assert str(error.value) == (
        f"--input_format tfrecord: {folder}/00000.tar does not look like a TFRecord file, nor do 2 more "
        f"of the files --input '{folder}/*' matches; it looks like a tar archive (WebDataset shard) "
        f"({folder} is an img2dataset output folder: beside its .tar shards it holds metadata files, each "
        "of which would be a damaged_shard errors row; to read only its shards, pass --input_format "
        f"webdataset --input '{folder}/*.tar')."
    )


# ------------------------------------------------------------------ through Beam


def test_read_shard_dofn_in_a_pipeline(tmp_path):
    good, cut, missing = tmp_path / "good.tar", tmp_path / "cut.tar", tmp_path / "missing.tar"
    write_tar(good, MEMBERS)
    cut.write_bytes(good.read_bytes()[:2560])
    images = [(f"{good}#000", b"x" * 1000), (f"{good}#001", b"y" * 600), (f"{good}#002", b"z" * 10)]
    images.append((f"{cut}#000", b"x" * 1000))
    errors = [
        error_row(
            image_id(str(cut)),
            str(cut),
            "read",
            "damaged_shard",
            f"{cut}: damaged at byte 2560 of the tar stream, after member '000.json': the file ends there, "
            "without the end-of-archive marker (truncated); 1 sample(s) read before it, the rest not read",
        ),
        error_row(
            image_id(str(missing)),
            str(missing),
            "read",
            "not_found",
            f"{missing}: reading failed before any member: [Errno 2] No such file or directory: '{missing}'",
        ),
    ]
    p = TestPipeline()
    read_ = (
        p
        | beam.Create([str(good), str(cut), str(missing)])
        | beam.ParDo(ReadShard("webdataset")).with_outputs("errors", main="images")
    )
    # Exactly ReadImage's shapes: (image_id, uri, bytes), and errors rows.
    assert_that(read_.images, equal_to([(image_id(u), u, d) for u, d in images]), label="images")
    assert_that(read_.errors, equal_to(errors), label="errors")
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("vgg16"))["counters"]
    }
    assert counters == {"shards_read": 3, "images_read": 4, "failed_read": 2}


def test_a_shard_of_good_and_bad_images_decodes_like_loose_files(tmp_path):
    # Every corpus kind that is in the bytes (not an injected read fault) as one member each.
    corpus = {n: v for n, v in build_corpus(large=False).items() if v[1].fault is None}
    members = [(name.replace(".", "_") + ".jpg", data) for name, (data, _) in corpus.items()]
    shard = tmp_path / "mixed.tar"
    write_tar(shard, members)
    s = str(shard)
    uri = {name: f"{s}#{name.replace('.', '_')}" for name in corpus}
    with TestPipeline() as p:
        read_ = (
            p | beam.Create([s]) | beam.ParDo(ReadShard("webdataset")).with_outputs("errors", main="images")
        )
        decoded = read_.images | beam.ParDo(DecodeImage(DecodeConfig(isolation="none"))).with_outputs(
            "errors", main="pixels"
        )
        assert_that(read_.errors, equal_to([]), label="no read errors")
        assert_that(
            decoded.pixels | beam.Map(lambda kv: (kv[0][1], (kv[0][2], kv[0][3]))),
            equal_to([(uri[n], e.size) for n, (_, e) in corpus.items() if e.stage is None]),
            label="predictions with the displayed size",
        )
        assert_that(
            decoded.errors | beam.Map(lambda r: (r["uri"], r["stage"], r["error_type"])),
            equal_to([(uri[n], e.stage, e.error_type) for n, (_, e) in corpus.items() if e.stage]),
            label="errors as for the loose files",
        )


# ------------------------------------------------------------------ memory


def write_big(fmt: str, path, block: bytes, count: int, *, huge: int = 0) -> None:
    """count members of `block` (for webdataset, then one of `huge` bytes, when asked)."""
    if fmt == "webdataset":

        def members():
            for i in range(count):
                yield f"{i:05d}.jpg", block
                yield f"{i:05d}.json", b"{}"
            if huge:
                yield "huge.jpg", Repeated(block, huge)

        write_tar(path, members(), size=lambda name: huge)
    elif fmt == "tfrecord":
        record = example({"image/encoded": block})
        write_tfrecord(path, (record for _ in range(count)))
    else:  # a row group per image, 4 MiB as 100 img2dataset photos; no dictionary, or the
        # repeated block would be stored once
        rows = ({"jpg": pa.array([block], pa.binary())} for _ in range(count))
        write_parquet(path, rows, use_dictionary=False, compression="none")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_a_200mb_shard_streams_in_bounded_memory(tmp_path, fmt):
    block = np.random.default_rng(0).integers(0, 256, 4 * MB, dtype=np.uint8).tobytes()
    write_big(fmt, tmp_path / "small", block[:1000], count=4)
    path = tmp_path / f"big.{fmt}"
    write_big(fmt, path, block, count=52, huge=100 * MB)  # the tar also holds 100 MiB over the cap
    try:
        assert os.path.getsize(path) >= 52 * 4 * MB  # 208 MiB of images
        # Read in a fresh process: this one, having written the shard, holds freed memory
        # in its allocators that a reader would reuse unseen.
        args = [path, fmt, tmp_path / "small", 16 * MB]
        done = subprocess.run(
            [sys.executable, "-m", "tests.shards", *map(str, args)], cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        found = json.loads(done.stdout.splitlines()[-1])
    finally:
        path.unlink()
    assert found["images"] == 52
    assert found["failures"] == ([[f"{path}#huge", "too_large"]] if fmt == "webdataset" else [])
    growth, late = found["growth"], found["growth"] - found["at_half"]
    print(
        f"{fmt}: {52 * 4} MiB of images, RSS growth {growth / MB:.1f} MiB, {late / MB:.1f} in the second half"
    )
    # All at once would take >= 208 MiB. A stream holds a member (4 MiB: a tar member, a
    # record, a Parquet row group) and buffers; allocator pools keep some freed memory.
    assert growth < 64 * MB, growth / MB
    # And it does not grow with the shard: the second half reads 104 MiB and adds less than
    # a third of that (allocators grow in steps of several MiB; none seen above 8).
    assert late < 32 * MB, (found["at_half"] / MB, growth / MB)
