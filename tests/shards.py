"""Shards for the tests, written with the libraries users write them with: tarfile, TFRecordWriter, pyarrow.

Each writer streams: a member, record or row group at a time, so a test can write a
shard of hundreds of MB from one repeated block without holding it.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import sys
import tarfile
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

BLOCK = 512  # a tar header, and the unit member data is padded to


def tar_offsets(sizes: Iterable[int]) -> list[int]:
    """Header offsets of members of these sizes in a tar tarfile writes (short ASCII names)."""
    offsets, at = [], 0
    for size in sizes:
        offsets.append(at)
        at += BLOCK + -(-size // BLOCK) * BLOCK
    return offsets


class Repeated(io.RawIOBase):
    """`size` bytes made of `block` repeated, read in pieces (a huge member without holding it)."""

    def __init__(self, block: bytes, size: int):
        self._block, self._left, self._at = block, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        done = 0
        while done < len(buffer) and self._left:  # full reads: tarfile takes a short one for the end
            n = min(len(buffer) - done, self._left, len(self._block) - self._at)
            buffer[done : done + n] = self._block[self._at : self._at + n]
            self._at = (self._at + n) % len(self._block)
            self._left -= n
            done += n
        return done


def write_tar(
    path: str | pathlib.Path, members: Iterable[tuple[str, bytes | Repeated]], *, size=None
) -> None:
    """A tar of (name, data) members; gzip-compressed when the name ends in .gz or .tgz.

    data may be a Repeated stream; then size(name) gives its length.
    """
    mode = "w:gz" if str(path).endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, bytes):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.size = size(name)
                tar.addfile(info, data)


def example(features: dict[str, bytes | int | list]) -> bytes:
    """A serialized tf.train.Example: bytes -> bytes_list, int -> int64_list, list -> as typed."""
    import tensorflow as tf

    def feature(value):
        values = value if isinstance(value, list) else [value]
        if values and isinstance(values[0], int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        if values and isinstance(values[0], float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    message = tf.train.Example(
        features=tf.train.Features(feature={k: feature(v) for k, v in features.items()})
    )
    return message.SerializeToString()


def write_tfrecord(path: str | pathlib.Path, records: Iterable[bytes], *, gzip: bool = False) -> None:
    """Records as tf.io.TFRecordWriter writes them (GZIP-compressed if asked)."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path), options="GZIP" if gzip else None) as writer:
        for record in records:
            writer.write(record)


def write_parquet(path: str | pathlib.Path, groups: Iterable[pa.Table | dict], **options) -> None:
    """One row group per table (or dict of columns), written as they come; options to ParquetWriter."""
    writer = None
    for group in groups:
        table = group if isinstance(group, pa.Table) else pa.table(group)
        if writer is None:
            writer = pq.ParquetWriter(str(path), table.schema, **options)
        writer.write_table(table, row_group_size=table.num_rows)
    writer.close()


def rss_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stream_growth(uri: str, fmt: str, *, warm_up: str, max_bytes: int) -> dict:
    """Reads warm_up, then uri, through pipeline.job.read.shards; the peak growth of resident memory.

    Meant for a fresh process (python -m tests.shards): one that wrote the shard keeps
    freed memory in its allocators, which the reader would reuse unseen. The warm-up shard
    takes what a first read sets up once per process (TensorFlow's parser, Arrow's pools).
    """
    from pipeline.job.read.shards import Member, read_shard

    list(read_shard(warm_up, fmt))
    before = rss_bytes()
    growth, at_half, images, failures = 0, 0, 0, []
    for item in read_shard(uri, fmt, max_bytes=max_bytes):
        if isinstance(item, Member):
            images += 1
        else:
            failures.append([item.uri, item.error_type])
        growth = max(growth, rss_bytes() - before)
        if images == 26:
            at_half = growth
    return {"images": images, "failures": failures, "growth": growth, "at_half": at_half}


if __name__ == "__main__":  # python -m tests.shards URI FORMAT WARM_UP_URI MAX_BYTES
    uri, fmt, warm_up, max_bytes = sys.argv[1:]
    print(json.dumps(stream_growth(uri, fmt, warm_up=warm_up, max_bytes=int(max_bytes))))


def write_img2dataset(
    folder: str | pathlib.Path, shards: list[list[bytes | None]], *, output_format: str = "webdataset"
) -> list[str]:
    """An img2dataset output folder as its writers lay it out (img2dataset/writer.py, logger.py): shard paths.

    Per shard NNNNN: `NNNNN.tar` (webdataset) or `NNNNN.parquet` (parquet) with the images,
    beside a webdataset shard `NNNNN.parquet` with the metadata only, and `NNNNN_stats.json`.
    The key is the shard number and the index in it (`000010002`); a None image is a failed
    download: a metadata row (status "failed_to_download"), no tar members, a null parquet jpg.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, images in enumerate(shards):
        name = f"{number:05d}"
        keys = [f"{name}{index:04d}" for index in range(len(images))]
        meta = {
            "url": [f"https://example.com/{key}.jpg" for key in keys],
            "caption": [f"caption {key}" for key in keys],
            "key": keys,
            "status": ["success" if image is not None else "failed_to_download" for image in images],
            "error_message": [None if image is not None else "HTTP Error 404" for image in images],
            "width": [256 if image is not None else None for image in images],
            "height": [256 if image is not None else None for image in images],
        }
        if output_format == "webdataset":
            members = []
            for key, image, url in zip(keys, images, meta["url"]):
                if image is not None:
                    record = json.dumps({"url": url, "key": key, "status": "success"}, indent=4).encode()
                    members += [
                        (f"{key}.jpg", image),
                        (f"{key}.txt", f"caption {key}".encode()),
                        (f"{key}.json", record),
                    ]
            write_tar(folder / f"{name}.tar", members)
            write_parquet(folder / f"{name}.parquet", [meta])
            paths.append(str(folder / f"{name}.tar"))
        elif output_format == "parquet":
            write_parquet(folder / f"{name}.parquet", [{**meta, "jpg": pa.array(images, pa.binary())}])
            paths.append(str(folder / f"{name}.parquet"))
        else:
            raise ValueError(f"output_format must be webdataset or parquet. Received: {output_format!r}")
        successes = sum(image is not None for image in images)
        stats = {
            "count": len(images),
            "successes": successes,
            "failed_to_download": len(images) - successes,
            "failed_to_resize": 0,
            "duration": 1.5,
            "status_dict": {"success": successes},
        }
        (folder / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))
    return paths
