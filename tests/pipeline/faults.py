"""A Beam filesystem for fault injection: `faulty:///abs/path` is the local file, with chosen failures.

Beam finds filesystems by scheme among FileSystem's subclasses, so importing this module
is enough for FileSystems.match/open (hence fileio.MatchAll and pipeline.job.read.files.read_bytes)
to route `faulty://` URIs here. Faults are set per local path in `FaultyFileSystem.faults`
and every open is counted in `FaultyFileSystem.opens`; both are class-level, shared by the
test and the in-process DirectRunner that TestPipeline uses.

Faults:
    ("transient", n): the first n opens fail with ConnectionResetError while reading
        (what a dropped GCS/S3 connection looks like), later ones succeed.
    ("always", 0): every open fails that way: never recovers.
    ("permission", 0): PermissionError at open. Injected rather than made with chmod,
        because these tests may run as root, whom file permissions do not stop.
    ("vanish", 0): the file is deleted just before it is opened (deleted between
        matching and reading); the real local open then fails with FileNotFoundError.
"""

from __future__ import annotations

import errno
import io
import os
from collections import Counter

from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "faulty"
PREFIX = f"{SCHEME}://"


class _DropsConnection(io.RawIOBase):
    def readable(self):
        return True

    def readinto(self, buffer):
        raise ConnectionResetError(errno.ECONNRESET, "injected: connection reset by peer")


class FaultyFileSystem(LocalFileSystem):
    """LocalFileSystem under the `faulty://` scheme, failing where `faults` says."""

    faults: dict[str, tuple[str, int]] = {}
    opens: Counter = Counter()

    @classmethod
    def scheme(cls):
        return SCHEME

    @classmethod
    def reset(cls) -> None:
        cls.faults.clear()
        cls.opens.clear()

    @staticmethod
    def local(path: str) -> str:
        return path.removeprefix(PREFIX)

    def join(self, basepath, *paths):
        return PREFIX + os.path.join(self.local(basepath), *paths)

    def split(self, path):
        head, tail = os.path.split(self.local(path))
        return PREFIX + head, tail

    def _list(self, dir_or_prefix):
        for root, _, files in os.walk(self.local(dir_or_prefix)):
            for name in files:
                path = os.path.join(root, name)
                yield FileMetadata(PREFIX + path, os.path.getsize(path), os.path.getmtime(path))

    def exists(self, path):
        return super().exists(self.local(path))

    def metadata(self, path):
        found = super().metadata(self.local(path))
        return FileMetadata(PREFIX + found.path, found.size_in_bytes, found.last_updated_in_seconds)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        local = self.local(path)
        self.opens[local] += 1
        kind, count = self.faults.get(local, (None, 0))
        if kind == "permission":
            raise PermissionError(errno.EACCES, "Permission denied (injected)", local)
        if kind == "vanish" and os.path.exists(local):
            os.remove(local)
        if kind == "always" or (kind == "transient" and self.opens[local] <= count):
            return io.BufferedReader(_DropsConnection())
        return super().open(local, mime_type, compression_type)


def faulty(path) -> str:
    """The faulty:// URI of a local path."""
    return PREFIX + os.path.abspath(path)


CRASH = b"CRASH!"
HANG = b"HANG!"


def crashing_decode(data: bytes, **kwargs):
    """decode_image, except that bytes starting with CRASH segfault and HANG never return.

    The segfault is real (a read of address 0 through ctypes): what a bug in a native
    image library does to the process it runs in.
    """
    if data.startswith(CRASH):
        import ctypes

        ctypes.string_at(0)
    if data.startswith(HANG):
        import time

        time.sleep(3600)
    from vgg.preprocess import decode_image

    return decode_image(data, **kwargs)


def crashing_thumbnail(data: bytes, **kwargs):
    """vgg.preprocess.thumbnail_image, except that CRASH and HANG bytes do as in crashing_decode."""
    if data.startswith((CRASH, HANG)):
        return crashing_decode(data)
    from vgg.preprocess import thumbnail_image

    return thumbnail_image(data, **kwargs)
