"""Bytes from any filesystem Beam knows (local, gs://, s3://): reads with the one retry policy, listings.

The job (pipeline.job) and the tools (pipeline.tools) both read through here: a file
whole (`read_bytes`), a Parquet footer (`read_schema`), a listing (`match`), a remote
weights file copied to local disk (`stage_weights`). What is read, and what the output's
files hold, is pipeline.contract's business; which files an output holds, pipeline.table's.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import io
import itertools
import logging
import os
import queue
import random
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import METRICS_NAMESPACE
from pipeline.contract import (
    decode_provenance,
    has_scheme,
    path_uri,
    uri_path,
)
from vgg.errors import ClassifiedError

log = logging.getLogger(__name__)

READ_ATTEMPTS = 4
READ_BACKOFF_S = 0.5
MAX_INPUT_BYTES = 256 * 2**20
# One read of one input (opening it and reading it whole) may take this long (--read_timeout_s).
READ_TIMEOUT_S = 300.0
# Counts every retried read (files and shards), in the job's metrics namespace.
_retries = Metrics.counter(METRICS_NAMESPACE, "read_retries")
# The errnos of a path that cannot name a readable file however often it is tried: a loop of
# symbolic links, a path component that is not a directory.
_PERMANENT_ERRNOS = {errno.ELOOP: "symlink_loop", errno.ENOTDIR: "not_found", errno.EISDIR: "not_a_file"}
# What a local name that is not a regular file is, by its stat mode.
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
T = TypeVar("T")


class InputError(ValueError):
    """An input pattern or list the job cannot use."""


class ReadError(ClassifiedError):
    """A read that failed for good; error_type is one of pipeline.contract.READ_ERROR_TYPES."""


class NotAFileError(OSError):
    """A local name that is no regular file (a directory, FIFO, socket, device): never opened."""


class ReadTimeout(Exception):
    """A read that did not finish within its time (--read_timeout_s); never retried."""


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
        if isinstance(cause, ReadTimeout):
            return "read_timeout"
        if isinstance(cause, NotAFileError):
            return "not_a_file"
        if isinstance(cause, FileNotFoundError) or status in (404, 410):
            return "not_found"
        if isinstance(cause, PermissionError) or status in (401, 403):
            return "permission_denied"
        if getattr(cause, "errno", None) in _PERMANENT_ERRNOS:
            return _PERMANENT_ERRNOS[cause.errno]
    if "not found" in text or "no such file" in text or "nosuchkey" in text or "not a directory" in text:
        return "not_found"
    if "permission denied" in text or "access denied" in text or "forbidden" in text:
        return "permission_denied"
    if "is a directory" in text:
        return "not_a_file"
    if "too many levels of symbolic links" in text:
        return "symlink_loop"
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
    timeout_s: float | None = READ_TIMEOUT_S,
    sleep=time.sleep,
) -> bytes:
    """Reads a whole file, retrying transient failures with backoff (`with_retries`).

    Not-found and permission errors (local OSErrors, or HTTP 404/403 from S3 or GCS), a
    symbolic-link loop, a path through a non-directory and a local name that is no regular
    file (decided before it is opened: `open_input`) are permanent and raise at once.
    Anything else is tried `attempts` times in all, waiting about backoff_s, 2 * backoff_s,
    ... in between, before giving up with error_type "read_error". A file over max_bytes
    is refused ("too_large") without reading the rest, so one huge object cannot exhaust a
    worker's memory. An attempt (opening and reading) that takes over timeout_s is
    "read_timeout" and is not retried (`within`).

    Raises:
        ReadError: error_type is one of READ_ERROR_TYPES.
    """
    try:
        (data,) = with_retries(
            lambda _: [within(timeout_s, lambda: _read_head(uri, max_bytes + 1))],
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
    with open_input(uri, CompressionTypes.UNCOMPRESSED) as handle:
        return read_up_to(handle, size)


def read_up_to(handle, size: int) -> bytes:
    """At most size bytes of a binary file object, from where it stands.

    A file's `read(size)` would set aside a buffer of size bytes before reading one (for a
    limit of hundreds of MB, that costs more than reading a photo): a local file is read
    with one buffer of its own size, anything else in reads that grow with what arrives.
    """
    try:
        first = min(size, os.fstat(handle.fileno()).st_size + 1)  # + 1: whether it grew, or ends
    except (AttributeError, OSError, io.UnsupportedOperation):  # not a local file
        first = min(size, _FIRST_READ_BYTES)
    chunks, total, step = [], 0, first
    while total < size:
        chunk = handle.read(min(step, size - total))
        if not chunk:  # the end (a shorter read need not be: raw streams may answer in parts)
            break
        chunks.append(chunk)
        total += len(chunk)
        step = max(step, 4 * len(chunk))
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_FIRST_READ_BYTES = 1 << 20


def within(timeout_s: float | None, call: Callable[[], T]) -> T:
    """`call()`, or ReadTimeout when it has not returned after timeout_s (None: no limit).

    The call runs on a reader thread (`_READERS`), not the caller's. A read blocked in the
    kernel (a FIFO with no writer, a hung network mount or connection) cannot be interrupted
    from Python, so a timed-out call is left behind, blocked, on its daemon thread: it costs
    that thread and its open handle, not the worker. This is also why a timed-out read is
    not retried: the next attempt would most likely block just the same and hold one more
    thread.

    Raises:
        ReadTimeout: after timeout_s; whatever `call` raised, unchanged.
    """
    if timeout_s is None:
        return call()
    done = threading.Event()
    outcome: list = []
    _READERS.submit(call, done, outcome)
    if not done.wait(timeout_s):
        raise ReadTimeout(f"no answer after {timeout_s:g} s (--read_timeout_s); left unread")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


class _ReaderThreads:
    """Daemon threads that run `within`'s calls, each kept for the next call once it is free.

    Starting a thread per read costs more than many reads of a small file. A thread whose call
    is blocked stays out of the idle list until the call returns, if ever; a caller that
    finds no idle thread starts a new one, so a blocked read never holds up another.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []

    def submit(self, call: Callable, done: threading.Event, outcome: list) -> None:
        with self._lock:
            tasks = self._idle.pop() if self._idle else None
        if tasks is None:
            tasks = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(tasks,), name="vgg16-read", daemon=True).start()
        tasks.put((call, done, outcome))

    def _serve(self, tasks: queue.SimpleQueue) -> None:
        while True:
            call, done, outcome = tasks.get()
            try:
                outcome.append((True, call()))
            except BaseException as error:  # handed to the caller's thread, whatever it is
                outcome.append((False, error))
            finally:
                with self._lock:
                    self._idle.append(tasks)
                done.set()
                del call, done, outcome  # an idle thread keeps nothing of its last call


_READERS = _ReaderThreads()


def is_local(uri: str) -> bool:
    """Whether `uri` is a path on this machine's disks: a plain path or a file:// URI."""
    return not has_scheme(uri) or uri.startswith("file://")


def open_input(uri: str, compression_type: str = CompressionTypes.AUTO, *, timeout_s: float | None = None):
    """A binary file object of an input: local, file:// (pipeline.contract.path_uri) or any Beam filesystem.

    A local name is looked at before it is opened: one that is no regular file (a
    directory, FIFO, socket, device) raises NotAFileError without being opened, because
    opening a FIFO or a device can block forever or do something; a dangling symbolic link
    is FileNotFoundError, a loop of them ELOOP. The open itself is non-blocking and checked
    again, so a name replaced by a FIFO in between cannot block either.

    With timeout_s, opening and every read from the storage (1 MiB at a time) that takes
    longer raises ReadTimeout (`within`): a stream that stops answering, not a slow one.
    """
    raw = within(timeout_s, lambda: _open_raw(uri))
    if timeout_s is not None:
        raw = io.BufferedReader(_TimedReads(raw, timeout_s), buffer_size=_TIMED_READ_BYTES)
    if compression_type == CompressionTypes.AUTO:
        compression_type = CompressionTypes.detect_compression_type(uri)
    if compression_type == CompressionTypes.UNCOMPRESSED:
        return raw
    return CompressedFile(raw, compression_type=compression_type)


_TIMED_READ_BYTES = 1 << 20


def _open_raw(uri: str):
    if not is_local(uri):
        return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)
    path = uri_path(uri)
    _check_regular(path, uri)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _check_regular_mode(os.fstat(fd).st_mode, uri)
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _TimedReads(io.RawIOBase):
    """A file whose every read must answer within timeout_s; ReadTimeout otherwise (`within`)."""

    mode = "rb"  # Beam's CompressedFile asks

    def __init__(self, inner, timeout_s: float):
        super().__init__()
        self._inner = inner
        self._timeout_s = timeout_s
        self._stuck = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            # One read of the storage at most (read1), so what came before a failure is kept;
            # a copy, not the caller's buffer: a read left behind must not write into it later.
            read = getattr(self._inner, "read1", self._inner.read)
            data = within(self._timeout_s, lambda: read(len(buffer)))
        except ReadTimeout:
            self._stuck = True
            raise
        buffer[: len(data)] = data
        return len(data)

    def seekable(self) -> bool:
        return self._inner.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        try:
            if not self._stuck:  # a read left behind holds the file: closing it could block too
                self._inner.close()
        finally:
            super().close()


def _check_regular(path: str, uri: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as error:
        if not os.path.islink(path):
            raise
        target = os.fsencode(os.readlink(path)).decode("utf-8", "backslashreplace")
        raise FileNotFoundError(errno.ENOENT, f"a dangling symbolic link (to {target!r})") from error
    _check_regular_mode(mode, uri)


def _check_regular_mode(mode: int, uri: str) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise NotAFileError(f"not a regular file: {kind}; not opened")


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
    """Sorted uris matching a pattern (local, gs://, s3://); none when it cannot be listed."""
    try:
        return sorted(dict.fromkeys(expand(pattern)))
    except (BeamIOError, OSError):
        return []


def expand(pattern: str, *, limit: int | None = None) -> Iterator[str]:
    """The uri of every entry a pattern matches (at most `limit` of them from an object store).

    A local pattern (a path, or a file:// URI) is matched by `local_glob`, the way the
    shell lists it: every name, whatever it is (a directory, FIFO, dangling link: reading
    it makes its errors row), spelled by pipeline.contract.path_uri. Any other (gs://,
    s3://, ...) by Beam's FileSystems.match: the objects its filesystem lists.
    """
    if is_local(pattern):
        for path in local_glob(uri_path(pattern)):
            yield path_uri(path)
        return
    for metadata in FileSystems.match([pattern], limits=None if limit is None else [limit])[0].metadata_list:
        yield metadata.path


def local_glob(pattern: str) -> Iterator[str]:
    """The local paths `pattern` matches, as bash lists them with `shopt -s globstar`.

    Python's glob.glob(pattern, recursive=True) has the same rules (`*`, `?`, `[...]`
    within one name; a name starting with '.' only by a pattern part that does; `**` as a
    whole part: zero or more folders, and as the last part everything under, the folder
    itself too; a trailing '/': folders only), but its `**` follows symbolic links to
    folders, so a link to a parent folder lists the tree again and again. Here `**` never
    descends through a link (which is still listed), as bash 4.3+ means it to (bash itself
    is not consistent there: after a folder part, its `**/` still enters a link one level).
    Names are sorted within each folder; a folder that cannot be listed contributes
    nothing, as in the shell.
    """
    if not glob.has_magic(pattern):
        if os.path.lexists(pattern):
            yield pattern
        return
    root = "/" if pattern.startswith("/") else ""
    found = _glob_parts(root, [part for part in pattern.split("/") if part])
    if not pattern.endswith("/"):
        yield from found
        return
    for path in found:  # a trailing '/' matches folders only, links to folders too
        if os.path.isdir(path):
            yield path if path.endswith("/") else f"{path}/"


def _glob_parts(base: str, parts: list[str]) -> Iterator[str]:
    """Matches of parts under `base` (empty: the current folder; else ending in '/')."""
    part, rest = parts[0], parts[1:]
    if part == "**":
        if not rest:  # everything under base, and base itself
            if base:
                yield base
            yield from _entries_below(base)
            return
        for folder in itertools.chain([base], _folders_below(base)):
            yield from _glob_parts(folder, rest)
    elif glob.has_magic(part):
        for name in _names(base, part, folders_only=bool(rest)):
            if rest == ["**"]:  # as bash lists it: the folder without a '/'
                yield base + name
                yield from _entries_below(f"{base}{name}/")
            elif rest:
                yield from _glob_parts(f"{base}{name}/", rest)
            else:
                yield base + name
    elif rest:
        if os.path.isdir(base + part):
            yield from _glob_parts(f"{base}{part}/", rest)
    elif os.path.lexists(base + part):
        yield base + part


def _scan(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder or ".") as entries:
            return sorted(entries, key=lambda entry: os.fsencode(entry.name))
    except OSError:
        return []


def _names(folder: str, part: str, *, folders_only: bool) -> Iterator[str]:
    hidden = part.startswith(".")
    for entry in _scan(folder):
        if (hidden or not entry.name.startswith(".")) and fnmatch.fnmatchcase(entry.name, part):
            if not folders_only or _is_folder(entry, follow=True):
                yield entry.name


def _is_folder(entry: os.DirEntry, *, follow: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError:
        return False


def _folders_below(folder: str) -> Iterator[str]:
    """Every folder under `folder` (each ending in '/'), not through links, not hidden ones."""
    for entry in _scan(folder):
        if not entry.name.startswith(".") and _is_folder(entry, follow=False):
            below = f"{folder}{entry.name}/"
            yield below
            yield from _folders_below(below)


def _entries_below(folder: str) -> Iterator[str]:
    """Every name under `folder`, files and folders, not through links, not hidden ones."""
    for entry in _scan(folder):
        if not entry.name.startswith("."):
            yield folder + entry.name
            if _is_folder(entry, follow=False):
                yield from _entries_below(f"{folder}{entry.name}/")
