"""WebDataset shards: a tar archive whose members sharing a key (the name up to its first dot) are one sample.

The three things every format module has: `read` (stream the samples' images),
`field_problem` (the launcher's look at a shard's first sample), `looks_like` (a file's
first block). The rules (keys, uris, error types) are documented in docs/inputs.md.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator

from pipeline.job.read.members import Failure, Member, Uris, damaged, too_large

# A WebDataset sample's image: the first member (in tar order) with one of these suffixes.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
# WebDataset's base_plus_ext: key = the path up to the first dot of the last component.
_KEY_AND_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


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
            return too_large(uri, f"member {self.too_large.name!r}", self.too_large.size, max_bytes)
        wanted = f"suffix {image_field!r}" if image_field else "an image extension"
        message = f"{uri}: no member with {wanted} (members: {', '.join(self.suffixes)})"
        return Failure(uri, "read", "no_image", message)


def read(shard: str, handle, image_field, _key_field, max_bytes) -> Iterator[Member | Failure]:
    uris = Uris(shard)
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
            key, suffix = _sample_member(member)
            if key is None:
                continue
            if _starts_sample(key, suffix, sample.key if sample else None, sample.suffixes if sample else ()):
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
        yield damaged(shard, where, str(error), done, "sample(s)")
        return
    if sample is not None:
        yield sample.item(uris(sample.key), image_field, max_bytes)
        done += 1
    end = getattr(tar, "vgg16_end", None)
    if not isinstance(end, tarfile.EOFHeaderError):  # not the end-of-archive blocks: cut or garbled
        what = _HEADER_PROBLEMS.get(type(end), f"invalid header ({end})")
        yield damaged(shard, where, what, done, "sample(s)")


# Why tarfile stopped where neither a header nor the end-of-archive marker is.
_HEADER_PROBLEMS = {
    tarfile.EmptyHeaderError: "the file ends there, without the end-of-archive marker (truncated)",
    tarfile.TruncatedHeaderError: "the file ends inside a header (truncated)",
}


def _tar_stream(tar: tarfile.TarFile) -> str:
    kind = getattr(tar.fileobj, "comptype", "tar")
    return "tar stream" if kind == "tar" else f"uncompressed tar stream (the file is {kind})"


def _sample_member(member: tarfile.TarInfo) -> tuple[str | None, str | None]:
    """(key, suffix) of a sample's member; (None, None) for directories, links, names without a dot."""
    return _split_name(member.name) if member.isfile() else (None, None)


def _starts_sample(key: str, suffix: str, sample_key: str | None, sample_suffixes) -> bool:
    """WebDataset's grouping: a new sample starts where the key changes or a suffix repeats."""
    return sample_key is None or key != sample_key or suffix in sample_suffixes


def _split_name(name: str) -> tuple[str | None, str | None]:
    match = _KEY_AND_SUFFIX.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, None)


def field_problem(handle, image_field: str | None, key_field: str | None) -> str | None:
    """What keeps the first sample from having the members --image_field/--key_field name, or None.

    Samples need not be alike, so only fields a user named are checked, against the first
    sample; a shard with no sample to judge by passes (its rows tell what is wrong with it).
    """
    names = _first_suffixes(handle)
    if not names:
        return None
    for flag, field in (("--image_field", image_field), ("--key_field", key_field)):
        if field is not None and field not in names:
            members = ", ".join(names)
            return f"its first sample has no member with suffix {field!r} for {flag} (members: {members})"
    return None


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
            name, suffix = _sample_member(member)
            if name is None:
                continue
            if key is not None and _starts_sample(name, suffix, key, suffixes):
                break
            key = name
            suffixes.append(suffix)
    except tarfile.TarError:
        pass  # damaged: judge by what was read before it, if anything
    return suffixes or None


def looks_like(head: bytes) -> bool:
    """Whether a file's first block is a tar header (tarfile checks its checksum)."""
    try:
        tarfile.TarInfo.frombuf(head[: tarfile.BLOCKSIZE], tarfile.ENCODING, "surrogateescape")
    except tarfile.EOFHeaderError:
        return True  # an archive with no members: all zeros
    except tarfile.HeaderError:
        return False
    return True
