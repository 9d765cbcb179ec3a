"""Bytes from any filesystem Beam knows (local, gs://, s3://): reads with the one retry policy, listings.

The job (pipeline.job) and the tools (pipeline.tools) both read through here: a file
whole (`read_bytes`), a Parquet footer (`read_schema`), an output's shards
(`find_shards`), a remote weights file copied to local disk (`stage_weights`). What is
read, and what the output's files hold, is pipeline.contract's business.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import METRICS_NAMESPACE
from pipeline.contract import ERRORS, PREDICTIONS, Shards, decode_provenance, shard_glob
from vgg.errors import ClassifiedError

log = logging.getLogger(__name__)

READ_ATTEMPTS = 4
READ_BACKOFF_S = 0.5
MAX_INPUT_BYTES = 256 * 2**20
# Counts every retried read (files and shards), in the job's metrics namespace.
_retries = Metrics.counter(METRICS_NAMESPACE, "read_retries")
# The errnos of a path that cannot name a readable file however often it is tried: a loop of
# symbolic links, a path component that is not a directory.
_PERMANENT_ERRNOS = {errno.ELOOP: "read_error", errno.ENOTDIR: "not_found"}
T = TypeVar("T")


class InputError(ValueError):
    """An input pattern or list the job cannot use."""


class ReadError(ClassifiedError):
    """A read that failed for good; error_type is one of pipeline.contract.READ_ERROR_TYPES."""


def first_cause(error: Exception) -> str:
    """The message of a failed filesystem call: the underlying errors of a BeamIOError, else its own."""
    if isinstance(error, BeamIOError) and error.exception_details:
        return "; ".join(str(e) for e in error.exception_details.values())
    return str(error)


def _status_code(error: BaseException) -> int | None:
    """The HTTP status of a cloud client error (Beam's S3ClientError, google.api_core's errors)."""
    for name in ("code", "status_code"):
        value = getattr(error, name, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    return None


def classify(error: Exception) -> str | None:
    """The permanent error type of a failed read, or None when a retry may help."""
    causes: list[BaseException] = [error]
    if isinstance(error, BeamIOError) and error.exception_details:
        causes += [e for e in error.exception_details.values() if isinstance(e, BaseException)]
    text = first_cause(error).lower()
    for cause in causes:
        status = _status_code(cause)
        if isinstance(cause, FileNotFoundError) or status in (404, 410):
            return "not_found"
        if isinstance(cause, PermissionError) or status in (401, 403):
            return "permission_denied"
        if isinstance(cause, IsADirectoryError):
            return "read_error"
        if getattr(cause, "errno", None) in _PERMANENT_ERRNOS:
            return _PERMANENT_ERRNOS[cause.errno]
    if "not found" in text or "no such file" in text or "nosuchkey" in text or "not a directory" in text:
        return "not_found"
    if "permission denied" in text or "access denied" in text or "forbidden" in text:
        return "permission_denied"
    if "is a directory" in text or "too many levels of symbolic links" in text:
        return "read_error"
    return None


def with_retries(
    attempt: Callable[[int], Iterable[T]],
    uri: str,
    *,
    attempts: int = READ_ATTEMPTS,
    backoff_s: float = READ_BACKOFF_S,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[T]:
    """Yields the items of `attempt(0)`; where a read fails in a way a retry may help, again.

    The one retry policy of every read (files and shards). `attempt(done)` reads `uri` and
    yields its items from item `done` on, so a retry after `done` items resumes without
    yielding any of them twice. An error that `classify` calls permanent is raised at once;
    any other is retried until `attempts` tries in all have failed. Before retry n the wait
    is backoff_s * 2**(n - 1) shortened by a random part of up to half (jitter: readers that
    failed together do not come back together). Each retry counts in `read_retries`.

    Raises:
        ValueError: attempts is under 1 (at once, not when iterated).
        The last attempt's error, unchanged: classify(error) tells a permanent one (not
        None) from one that kept failing for `attempts` tries (None).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1. Received: attempts={attempts}")
    return _retried(attempt, uri, attempts, backoff_s, sleep)


def _retried(attempt, uri: str, attempts: int, backoff_s: float, sleep) -> Iterator:
    done = 0
    for tried in range(1, attempts + 1):
        try:
            for item in attempt(done):
                yield item
                done += 1
            return
        except Exception as error:  # cloud clients raise their own types, not only OSError
            if classify(error) is not None or tried == attempts:
                raise
            delay = backoff_s * 2 ** (tried - 1) * (1 - random.random() / 2)
            _retries.inc()
            log.warning(
                "read of %s failed (%s); retry %d of %d in %.2f s", uri, error, tried, attempts - 1, delay
            )
            sleep(delay)


def read_bytes(
    uri: str,
    *,
    attempts: int = READ_ATTEMPTS,
    backoff_s: float = READ_BACKOFF_S,
    max_bytes: int = MAX_INPUT_BYTES,
    sleep=time.sleep,
) -> bytes:
    """Reads a whole file, retrying transient failures with backoff (`with_retries`).

    Not-found and permission errors (local OSErrors, or HTTP 404/403 from S3 or GCS), a
    symbolic-link loop and a path through a non-directory are permanent and raise at once.
    Anything else is tried `attempts` times in all, waiting about backoff_s, 2 * backoff_s,
    ... in between, before giving up with error_type "read_error". A file over max_bytes
    is refused ("too_large") without reading the rest, so one huge object cannot exhaust a
    worker's memory.

    Raises:
        ReadError: error_type is one of READ_ERROR_TYPES.
    """
    try:
        (data,) = with_retries(
            lambda _: [_read_head(uri, max_bytes + 1)],
            uri,
            attempts=attempts,
            backoff_s=backoff_s,
            sleep=sleep,
        )
    except Exception as error:  # cloud clients raise their own types, not only OSError
        kind = classify(error)
        if kind is not None:
            raise ReadError(kind, f"{uri}: {first_cause(error)}") from error
        raise ReadError("read_error", f"{uri}: failed {attempts} times: {first_cause(error)}") from error
    if len(data) > max_bytes:
        raise ReadError(
            "too_large",
            f"{uri}: larger than {max_bytes} bytes (--max_input_bytes); not read to the end",
        )
    return data


def _read_head(uri: str, size: int) -> bytes:
    with FileSystems.open(uri, compression_type="uncompressed") as handle:
        return handle.read(size)


_staged: dict[str, str] = {}


def stage_weights(uri: str) -> str:
    """A local path for a weights URI: remote files are copied once per process to a temp dir.

    Raises:
        InputError: the remote file cannot be read.
    """
    if uri == "imagenet" or "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    if uri not in _staged:
        folder = tempfile.mkdtemp(prefix="vgg16-weights-")
        local = os.path.join(folder, os.path.basename(uri) or "weights")
        try:
            with FileSystems.open(uri, compression_type="uncompressed") as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        except (BeamIOError, OSError) as error:
            raise InputError(f"--weights {uri!r} cannot be read: {first_cause(error)}") from error
        _staged[uri] = local
    return _staged[uri]


def read_schema(path: str) -> pa.Schema:
    """The Arrow schema (columns and provenance) of one shard, local or remote."""
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return pq.read_schema(handle)


def read_provenance(path: str) -> dict[str, str]:
    return decode_provenance(read_schema(path).metadata)


def match(pattern: str) -> list[str]:
    """Sorted paths matching a pattern (local, gs://, s3://); none when it cannot be listed."""
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except (BeamIOError, OSError):
        return []


def find_shards(output: str) -> Shards:
    return Shards(
        predictions=tuple(match(shard_glob(output, PREDICTIONS))),
        errors=tuple(match(shard_glob(output, ERRORS))),
    )
