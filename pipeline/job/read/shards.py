"""Sharded image collections: every member of a tar (WebDataset), TFRecord or Parquet shard, streamed.

A shard is opened through Beam's filesystems (local, gs://, s3://) and read as a stream,
one tar member, TFRecord record or few Parquet rows at a time (pipeline.job.read.formats),
so it is never held whole. Every member becomes exactly one item: a Member (an image) or
a Failure whose error_type is one of pipeline.contract.READ_ERROR_TYPES.

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

ReadInputs is the job's one read step for every --input_format: loose files
(pipeline.job.label.ReadImages) or shards (ReadShard between two reshuffles).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics

from pipeline import METRICS_NAMESPACE, ConfigError
from pipeline.contract import ERRORS, error_row, image_id, printable
from pipeline.job import failpoints
from pipeline.job.read import files, formats
from pipeline.job.read.files import MatchInputs, ReadImages
from pipeline.job.read.formats import FORMATS, SNIFF_BYTES
from pipeline.job.read.members import Failure, Member
from pipeline.storage import (
    MAX_INPUT_BYTES,
    READ_ATTEMPTS,
    READ_BACKOFF_S,
    READ_TIMEOUT_S,
    InputError,
    classify,
    expand,
    first_cause,
    open_input,
    read_bytes,
    with_retries,
)

__all__ = [
    "FORMATS",
    "INPUT_FORMATS",
    "InputConfig",
    "ReadInputs",
    "ReadShard",
    "check_format",
    "check_inputs",
    "check_sample",
    "read_shard",
    "sniff",
]

# Every --input_format: "files" (one image per file) first, the default, then the shard formats.
INPUT_FORMATS = ("files", *FORMATS)

_DESCRIPTION = {
    "webdataset": "a tar archive (WebDataset shard)",
    "tfrecord": "a TFRecord file",
    "parquet": "a Parquet file",
}
_COMPRESSION = {
    "webdataset": CompressionTypes.UNCOMPRESSED,  # tarfile's "r|*" finds gzip itself, also in .tgz
    "tfrecord": CompressionTypes.UNCOMPRESSED,  # tfrecord.read gunzips `.gz` itself (tfrecord.gunzipped)
    "parquet": CompressionTypes.UNCOMPRESSED,
}
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Where the inputs are and how to read them (--input, --input_list, --input_format, ...).

    Every field is checked here, where the config is made (ConfigError, naming the flag).

    Attributes:
        patterns: file patterns (--input); with a shard format they match shards.
        input_list: a text file of URIs (of shards, with a shard format), one per line.
        format: one of INPUT_FORMATS (--input_format).
        image_field, key_field: see read_shard (shard formats only).
        max_bytes: a larger file or member is a "too_large" errors row (--max_input_bytes).
        read_timeout_s: a read that takes longer is a "read_timeout" errors row (--read_timeout_s).
    """

    patterns: tuple[str, ...] = ()
    input_list: str | None = None
    format: str = INPUT_FORMATS[0]
    image_field: str | None = None
    key_field: str | None = None
    max_bytes: int = MAX_INPUT_BYTES
    read_timeout_s: float = READ_TIMEOUT_S

    def __post_init__(self):
        if not self.patterns and not self.input_list:
            raise ConfigError("no input: pass --input PATTERN (repeatable) and/or --input_list FILE.")
        if self.format not in INPUT_FORMATS:
            raise ConfigError(
                f"--input_format (format) must be one of {'|'.join(INPUT_FORMATS)}. Received: {self.format!r}"
            )
        if self.format not in FORMATS and (self.image_field or self.key_field):
            flag = "--image_field" if self.image_field else "--key_field"
            raise ConfigError(
                f"{flag} names a part of a shard; it needs a shard format (--input_format "
                f"{'|'.join(FORMATS)}). Received: --input_format {self.format}"
            )
        if self.format == "webdataset" and self.key_field:
            raise ConfigError(
                "--key_field applies to tfrecord and parquet shards; a webdataset sample's key is its "
                f"member names' (docs/inputs.md). Received: --key_field {self.key_field}"
            )
        if self.max_bytes < 1:
            raise ConfigError(
                f"--max_input_bytes (max_bytes) must be at least 1 byte. Received: {self.max_bytes}"
            )
        if not self.read_timeout_s > 0:  # also refuses nan
            raise ConfigError(
                "--read_timeout_s (read_timeout_s) must be more than 0 seconds. "
                f"Received: {self.read_timeout_s}"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InputConfig:
        """The inputs of a run, from `python -m pipeline.run`'s parsed options."""
        return cls(
            patterns=tuple(args.input or ()),
            input_list=args.input_list,
            format=args.input_format,
            image_field=args.image_field,
            key_field=args.key_field,
            max_bytes=args.max_input_bytes,
            read_timeout_s=args.read_timeout_s,
        )


def read_shard(
    uri: str,
    fmt: str,
    *,
    image_field: str | None = None,
    key_field: str | None = None,
    max_bytes: int = MAX_INPUT_BYTES,
    timeout_s: float | None = READ_TIMEOUT_S,
    attempts: int = READ_ATTEMPTS,
    backoff_s: float = READ_BACKOFF_S,
    sleep=time.sleep,
) -> Iterator[Member | Failure]:
    """Streams one shard: an item per member, in shard order; never raises for bad data.

    A read that fails (not damage: an I/O error, e.g. a dropped connection) is retried
    as pipeline.job.read.files.read_bytes' are (`with_retries`): `attempts` tries in all with
    exponential backoff and jitter; not found and permission errors never. A retry reopens
    the shard and passes over the items already yielded (the order is fixed), so none is
    yielded twice.

    Args:
        uri: The shard (local path, gs://, s3://, ...).
        fmt: One of FORMATS.
        image_field: The image member's suffix (webdataset), feature (tfrecord) or column
            (parquet); default: the first present of the format's defaults.
        key_field: The feature or column holding each record's key (tfrecord, parquet).
        max_bytes: A larger member is a "too_large" Failure (--max_input_bytes).
        timeout_s: Opening the shard, or any one read from it (1 MiB), that takes longer
            ends the shard with a "read_timeout" Failure, not retried (--read_timeout_s).
    """
    reader = formats.module(fmt).read

    def attempt(done: int) -> Iterator[Member | Failure]:
        with open_input(uri, _COMPRESSION[fmt], timeout_s=timeout_s) as handle:
            items = reader(uri, handle, image_field, key_field, max_bytes)
            yield from itertools.islice(items, done, None)  # a retry passes over those yielded

    done = 0
    try:
        for item in with_retries(attempt, uri, attempts=attempts, backoff_s=backoff_s, sleep=sleep):
            yield item
            done += 1
    except Exception as error:  # cloud clients raise their own types, not only OSError
        kind = classify(error)
        tries = f" (tried {attempts} times)" if kind is None else ""
        after = f"after {done} member(s)" if done else "before any member"
        message = f"{uri}: reading failed {after}{tries}: {first_cause(error)}"
        yield Failure(uri, "read", kind or "read_error", message)


def sniff(uri: str) -> str | None:
    """The shard format a file's first 64 KiB show (one of FORMATS), or None.

    Raises:
        InputError: the file cannot be read.
    """
    return formats.sniff(_head(uri), uri)


def check_format(uri: str, fmt: str) -> None:
    """Fails unless the file looks like `fmt`.

    Raises:
        InputError: naming the file, the format asked for and what the file looks like.
    """
    formats.module(fmt)  # a ValueError for anything but a shard format
    head = _head(uri)
    found = formats.sniff(head, uri)
    if found != fmt:
        raise InputError(
            f"--input_format {fmt}: {uri} does not look like {_DESCRIPTION[fmt]}; {_seen(head, found)}."
        )


def _seen(head: bytes, found: str | None, *, advise: bool = True) -> str:
    """What a file unlike the format asked for looks like, and (advise) what to pass instead."""
    if found is not None:
        advice = f": pass --input_format {found}" if advise else ""
        return f"it looks like {_DESCRIPTION[found]}{advice}"
    if not head:
        return "it is empty"
    return f"its first bytes ({head[:8].hex(' ')}) are none of the shard formats'"


def _head(uri: str, timeout_s: float | None = READ_TIMEOUT_S) -> bytes:
    # open_input looks at a local name before opening it: a FIFO or a device, which could
    # block the launcher forever, is refused unopened; a read that never answers times out.
    try:
        with open_input(uri, CompressionTypes.UNCOMPRESSED, timeout_s=timeout_s) as handle:
            return handle.read(SNIFF_BYTES)
    except Exception as error:  # cloud clients raise their own types, not only OSError
        raise InputError(f"{uri} cannot be read: {first_cause(error)}") from error


# -- the Beam step


class ReadShard(beam.DoFn):
    """shard uri -> (image_id, uri, bytes) per image member; the rest to the "errors" output.

    The same shapes and counters as pipeline.job.label.ReadImage, one shard at a time:
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
        read_timeout_s: float = READ_TIMEOUT_S,
    ):
        formats.module(fmt)  # a ValueError for anything but a shard format
        self._fmt = fmt
        self._image_field = image_field
        self._key_field = key_field
        self._max_bytes = max_bytes
        self._read_timeout_s = read_timeout_s
        self._read = Metrics.counter(METRICS_NAMESPACE, "images_read")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "failed_read")
        self._shards = Metrics.counter(METRICS_NAMESPACE, "shards_read")

    def process(self, shard: str):
        self._shards.inc()
        items = read_shard(
            shard,
            self._fmt,
            image_field=self._image_field,
            key_field=self._key_field,
            max_bytes=self._max_bytes,
            timeout_s=self._read_timeout_s,
        )
        for item in items:
            key = image_id(item.uri)  # a valid UTF-8 spelling of any name (pipeline.contract.key_uri)
            if isinstance(item, Failure):
                self._failed.inc()
                row = error_row(key, item.uri, item.stage, item.error_type, printable(item.message))
                yield beam.pvalue.TaggedOutput(ERRORS, row)
            else:
                self._read.inc()
                yield key, item.uri, item.data


# -- the launcher's checks


# The launcher reads the head of at most this many of a pattern's files (and of the list's
# URIs), files named like the format's shards first, and stops at the first that looks like
# the format: one open when the first is a good shard, a few more to see past a damaged or
# stray file without mistaking it for a wrong --input_format.
SAMPLE_OPENS = 8
# How many of a pattern's matches (one listing call) the launcher picks those files from.
SAMPLE_NAMES = 1000
# img2dataset's shard files by --output_format, in the order they are told apart: a tar or
# TFRecord shard has a `.parquet` of metadata beside it, and every shard an `_stats.json`.
_IMG2DATASET_SHARDS = {"tar": "webdataset", "tfrecord": "tfrecord", "parquet": "parquet"}


def check_inputs(config: InputConfig) -> None:
    """The launcher's check of the inputs: they exist (pipeline.job.read.files.check_inputs), and with a
    shard format, each pattern's files (and the list's URIs) hold shards of that format (check_sample),
    and the first such shard has the fields --image_field and --key_field name (check_fields).

    Raises:
        InputError: naming the pattern, list or file and what is wrong with it.
    """
    files.check_inputs(list(config.patterns), config.input_list)
    if config.format == "files":
        return
    heads: dict[str, bytes | InputError] = {}
    look = functools.partial(check_sample, fmt=config.format, heads=heads, timeout_s=config.read_timeout_s)
    shards = [look(_listed(pattern), source=f"--input {pattern!r} matches") for pattern in config.patterns]
    if config.input_list:
        listed = [files.absolute(uri) for uri in files.read_input_list(config.input_list)[:SAMPLE_NAMES]]
        shards.append(look(listed, source=f"--input_list {config.input_list!r} names"))
    check_fields(shards[0], config)


def check_sample(
    uris: list[str],
    fmt: str,
    source: str,
    *,
    heads: dict | None = None,
    timeout_s: float | None = READ_TIMEOUT_S,
) -> str:
    """The first of some of `uris` that looks like `fmt`: fails only when none of them does.

    Opens at most SAMPLE_OPENS of them, those named like the format's shards first. A
    damaged or stray file (an img2dataset folder's metadata beside its tars) among them is
    the job's errors row, as it is anywhere else in the inputs; the launcher only warns.

    Args:
        uris: the files of one pattern or list, in listing order.
        fmt: one of FORMATS.
        source: what named them, for messages ("--input '/data/*' matches").
        heads: uri -> first bytes (or the InputError reading them), shared by the calls of
            one check so that no file is opened twice.
        timeout_s: a file whose read takes longer cannot be read (--read_timeout_s).

    Raises:
        InputError: none of the files opened looks like `fmt` (naming one of them and
            what it looks like), or none could be read (the first one's error).
    """
    heads = {} if heads is None else heads
    named = sorted(uris, key=lambda uri: not formats.named_like(uri, fmt))  # stable: else listing order
    unlike: list[tuple[str, bytes, str | None]] = []
    unread: list[InputError] = []
    for uri in named[:SAMPLE_OPENS]:
        if uri not in heads:
            try:
                heads[uri] = _head(uri, timeout_s)
            except InputError as error:
                heads[uri] = error
        head = heads[uri]
        if isinstance(head, InputError):
            unread.append(head)
            continue
        found = formats.sniff(head, uri)
        if found == fmt:
            _warn_strays(uris, fmt, source, unlike, unread)
            return uri
        unlike.append((uri, head, found))
    if not unlike:
        raise unread[0] if unread else InputError(f"{source} no files.")
    # The file to name: one that says what to pass instead (an img2dataset folder's shards,
    # not its metadata), else the first.
    folder = _img2dataset_folder(uris)
    wanted = (folder[2],) if folder else ()
    uri, head, found = next(
        (u for u in unlike if u[2] in wanted), next((u for u in unlike if u[2] is not None), unlike[0])
    )
    others = len(unlike) + len(unread) - 1
    also = f", nor {'does' if others == 1 else 'do'} {others} more of the files {source}" if others else ""
    hint = _img2dataset_hint(uris, fmt)  # which says what to pass, if anything does
    raise InputError(
        f"--input_format {fmt}: {uri} does not look like {_DESCRIPTION[fmt]}{also}; "
        f"{_seen(head, found, advise=not hint)}{hint}."
    )


def _listed(pattern: str) -> list[str]:
    """Up to SAMPLE_NAMES entries a pattern matches, as the job lists them (one listing call)."""
    try:
        return list(itertools.islice(expand(files.absolute(pattern), limit=SAMPLE_NAMES), SAMPLE_NAMES))
    except Exception as error:  # cloud clients raise their own types, not only OSError
        raise InputError(f"--input {pattern!r} cannot be listed: {first_cause(error)}") from error


def _warn_strays(uris: list[str], fmt: str, source: str, unlike: list, unread: list) -> None:
    """Warns of files among good shards that the job will give an errors row, with a better pattern."""
    hint = _img2dataset_hint(uris, fmt)
    if hint and source.startswith("--input "):
        log.warning("--input_format %s: the files %s are not all shards%s.", fmt, source, hint)
    elif unlike:
        uri, head, found = unlike[0]
        more = len(unlike) + len(unread) - 1
        also = f"; nor {'does' if more == 1 else 'do'} {more} more of the files {source}" if more else ""
        log.warning(
            "--input_format %s: %s does not look like %s: %s%s; the job gives each such file an errors row.",
            fmt,
            uri,
            _DESCRIPTION[fmt],
            _seen(head, found, advise=False),
            also,
        )
    elif unread:
        log.warning("--input_format %s: %s; the job gives it an errors row.", fmt, unread[0])


def _img2dataset_folder(uris: list[str]) -> tuple[str, str, str] | None:
    """(folder, shard extension, --input_format) when `uris` include an img2dataset output folder's files.

    img2dataset writes, per shard, `00012.tar` (or `.tfrecord`, `.parquet`, by its
    --output_format), beside a tar or TFRecord shard its metadata in `00012.parquet`, and
    `00012_stats.json`.
    """
    folders: dict[str, set[str]] = {}
    for uri in uris:
        folder, _, name = uri.rpartition("/")
        folders.setdefault(folder, set()).add(name)
    for folder, names in folders.items():
        stems = {name.removesuffix("_stats.json") for name in names if name.endswith("_stats.json")}
        for ext, shard_format in _IMG2DATASET_SHARDS.items():
            if any(f"{stem}.{ext}" in names for stem in stems):
                return folder, ext, shard_format
    return None


def _img2dataset_hint(uris: list[str], fmt: str) -> str:
    """For files of an img2dataset output folder other than its shards: the pattern of its shards, else ""."""
    found = _img2dataset_folder(uris)
    if found is None:
        return ""
    folder, ext, shard_format = found
    if shard_format == fmt and all(uri.endswith(f".{ext}") for uri in uris):
        return ""
    flag = f"--input_format {shard_format} " if shard_format != fmt else ""
    return (
        f" ({folder} is an img2dataset output folder: beside its .{ext} shards it holds metadata "
        "files, each of which would be a damaged_shard errors row; to read only its shards, pass "
        f"{flag}--input '{folder}/*.{ext}')"
    )


def check_fields(uri: str, config: InputConfig) -> None:
    """Fails when a shard shows that the image or key field asked for is not there.

    A Parquet file is judged by its schema; a tar or TFRecord file by its first sample or
    record, and only for fields named on the command line (each format module's field_problem).

    Raises:
        InputError: naming the shard, the field and what the shard has instead.
    """
    fmt = config.format
    if fmt != "parquet" and not (config.image_field or config.key_field):
        return  # nothing named, and one sample says little about the others
    try:
        # Beam's decompression by name (`.gz`) is enough here: only the first record or sample is read.
        with open_input(uri, CompressionTypes.AUTO, timeout_s=config.read_timeout_s) as handle:
            problem = formats.module(fmt).field_problem(handle, config.image_field, config.key_field)
    except Exception:  # a read that fails or times out (cloud clients raise their own types)
        return  # check_sample has read its head; a later failure is the job's errors row
    if problem:
        raise InputError(f"--input_format {fmt}: {uri}: {problem}.")


# -- the job's read step, for every format


def _item_id(item) -> str:
    """The image_id of a ReadShard output: an image (image_id, uri, bytes) or an errors row."""
    return item["image_id"] if isinstance(item, dict) else item[0]


class _SplitItems(beam.DoFn):
    def process(self, item):
        yield beam.pvalue.TaggedOutput(ERRORS, item) if isinstance(item, dict) else item


class ReadInputs(beam.PTransform):
    """PBegin -> {"images": (image_id, uri, bytes), "errors": rows}; every input lands in one of them.

    files: each matched file is an input, read whole (pipeline.job.label.ReadImages).
    A shard format: each matched file is a shard. The shards are spread over the workers
    (a reshuffle), each streamed by one ReadShard call, and their images are spread again,
    so that one big shard is labelled by many workers (not on the DirectRunner, whose
    in-memory shuffle would hold every image read).

    With plan (pipeline.job.resume.Plan, when --output holds earlier shards), what is already
    done is skipped where its image_ids are known: a file before it is read; a shard's
    members after it is read (their uris come from the shard), and a shard whose own uri
    has an old errors row (it could not be opened, or was damaged) before it is opened,
    unless --retry_errors. The errors output then also holds the old errors rows to carry
    into this attempt's shards.
    """

    def __init__(self, config: InputConfig, *, reader=None, plan=None):
        super().__init__()
        self._config = config
        self._reader = reader or file_reader(config.max_bytes, config.read_timeout_s)
        self._plan = plan

    def expand(self, pbegin):
        uris = (
            pbegin
            | "Match" >> MatchInputs(list(self._config.patterns), self._config.input_list)
            | "Listed" >> beam.Map(_hit_listed)
        )
        return self._files(uris) if self._config.format == "files" else self._shards(uris)

    def _files(self, uris):
        todo, carried = self._plan.skip_done(uris) if self._plan else (uris, [])
        read = todo | "ReadFiles" >> ReadImages(self._reader)
        return {"images": read["images"], ERRORS: self._with(read[ERRORS], carried)}

    def _shards(self, uris):
        c = self._config
        resuming = self._plan is not None and self._plan.resuming
        shards = self._plan.skip_failed(uris) if resuming else uris
        reader = ReadShard(
            c.format,
            image_field=c.image_field,
            key_field=c.key_field,
            max_bytes=c.max_bytes,
            read_timeout_s=c.read_timeout_s,
        )
        read = (
            shards
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadShards" >> beam.ParDo(reader).with_outputs(ERRORS, main="images")
        )
        if not resuming:
            images = read.images
            if not _runs_in_one_process(uris.pipeline):
                images = images | "SpreadImages" >> beam.Reshuffle()
            return {"images": images, ERRORS: read[ERRORS]}
        # Skipping is a join on image_id: it spreads the images as the reshuffle would.
        items = (read.images, read[ERRORS]) | "Items" >> beam.Flatten()
        also = shards | "ShardIds" >> beam.Map(image_id)
        todo, carried = self._plan.skip_done(items, key=_item_id, also=also, label="SkipDoneMembers")
        split = todo | "Split" >> beam.ParDo(_SplitItems()).with_outputs(ERRORS, main="images")
        return {"images": split.images, ERRORS: self._with(split[ERRORS], carried)}

    @staticmethod
    def _with(errors, carried: list):
        return (errors, *carried) | "ReadErrors" >> beam.Flatten() if carried else errors


def _hit_listed(uri: str) -> str:
    failpoints.hit("listed")  # inputs listed, none read (tests only)
    return uri


def _runs_in_one_process(pipeline) -> bool:
    """Whether the runner is Beam's local DirectRunner.

    Spreading a shard's images pays off across workers; on the DirectRunner it would only
    hold every image read in memory (its shuffle is in memory), so there the images go
    straight from the shard reader to the decoder, one bundle at a time.
    """
    return "DirectRunner" in type(pipeline.runner).__name__


def file_reader(max_bytes: int, timeout_s: float):
    return functools.partial(read_bytes, max_bytes=max_bytes, timeout_s=timeout_s)
