"""Storage for the job through Beam's filesystems: input matching, reads with retries, outputs, weights."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

log = logging.getLogger(__name__)

PREDICTIONS_PREFIX = "predictions"
ERRORS_PREFIX = "errors"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SUFFIX = ".parquet"


class InputError(ValueError):
    """An input pattern or list the job cannot use."""


class ReadError(OSError):
    """A read that failed for good; error_type is "not_found", "permission_denied" or "read_error"."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def image_id(uri: str) -> str:
    """Stable, unique id of an input: the first 32 hex digits (128 bits) of SHA-256 of its URI."""
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:32]


def check_patterns(patterns: list[str]) -> None:
    """Fails when a pattern matches nothing (one listing call per pattern, first match only)."""
    for pattern in patterns:
        try:
            result = FileSystems.match([pattern], limits=[1])[0]
        except (BeamIOError, OSError, ValueError) as error:
            raise InputError(f"--input {pattern!r} cannot be listed: {_first_cause(error)}") from error
        if not result.metadata_list:
            raise InputError(f"--input {pattern!r} matches no files.")


def read_input_list(path: str) -> list[str]:
    """URIs from a text file, one per line; blank lines and '#' comments skipped."""
    try:
        with FileSystems.open(path) as handle:
            text = handle.read().decode("utf-8")
    except (BeamIOError, OSError) as error:
        raise InputError(f"--input_list {path!r} cannot be read: {_first_cause(error)}") from error
    except UnicodeDecodeError as error:
        raise InputError(f"--input_list {path!r} is not UTF-8 text: {error}") from error
    uris = [line.strip() for line in text.splitlines()]
    uris = [u for u in uris if u and not u.startswith("#")]
    if not uris:
        raise InputError(f"--input_list {path!r} lists no URIs.")
    return uris


def _first_cause(error: Exception) -> str:
    if isinstance(error, BeamIOError) and error.exception_details:
        return "; ".join(str(e) for e in error.exception_details.values())
    return str(error)


def _classify(error: Exception) -> str | None:
    """The permanent error type of a failed read, or None when a retry may help."""
    text = _first_cause(error).lower()
    if isinstance(error, FileNotFoundError) or "not found" in text or "no such file" in text:
        return "not_found"
    if isinstance(error, PermissionError) or "permission denied" in text or "access denied" in text:
        return "permission_denied"
    if isinstance(error, IsADirectoryError) or "is a directory" in text:
        return "read_error"
    return None


def read_bytes(uri: str, *, attempts: int = 4, backoff_s: float = 0.5, sleep=time.sleep) -> bytes:
    """Reads a whole file, retrying transient failures with exponential backoff.

    Not-found and permission errors are permanent and raise at once; anything else is
    retried `attempts` times in all before giving up with error_type "read_error".
    """
    for attempt in range(1, attempts + 1):
        try:
            with FileSystems.open(uri, compression_type="uncompressed") as handle:
                return handle.read()
        except (BeamIOError, OSError) as error:
            kind = _classify(error)
            if kind is not None:
                raise ReadError(kind, f"{uri}: {_first_cause(error)}") from error
            if attempt == attempts:
                raise ReadError(
                    "read_error", f"{uri}: failed {attempts} times: {_first_cause(error)}"
                ) from error
            log.warning("read of %s failed (%s); retry %d of %d", uri, error, attempt, attempts - 1)
            sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def output_prefix(output: str, name: str) -> str:
    return FileSystems.join(output, name)


def existing_outputs(output: str) -> list[str]:
    """Our Parquet shards already in `output` (a re-run replaces them)."""
    found = []
    for name in (PREDICTIONS_PREFIX, ERRORS_PREFIX):
        pattern = output_prefix(output, name) + "-*-of-*" + SUFFIX
        try:
            found += [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        except (BeamIOError, OSError):
            continue
    return sorted(found)


def check_output_writable(output: str) -> None:
    """Creates the output directory if needed and proves a file can be written there."""
    probe = FileSystems.join(output, f".write-check-{os.getpid()}")
    try:
        if "://" not in output:
            os.makedirs(output, exist_ok=True)
        with FileSystems.create(probe) as handle:
            handle.write(b"ok")
        FileSystems.delete([probe])
    except (BeamIOError, OSError) as error:
        raise InputError(f"--output {output!r} is not writable: {_first_cause(error)}") from error


def remove_outputs(paths: list[str]) -> None:
    if paths:
        log.info("replacing %d existing output file(s)", len(paths))
        FileSystems.delete(paths)


_staged: dict[str, str] = {}


def stage_weights(uri: str) -> str:
    """A local path for a weights URI: remote files are copied once per process to a temp dir."""
    if uri == "imagenet" or "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    if uri not in _staged:
        folder = tempfile.mkdtemp(prefix="vgg16-weights-")
        local = os.path.join(folder, os.path.basename(uri) or "weights")
        try:
            with FileSystems.open(uri, compression_type="uncompressed") as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        except (BeamIOError, OSError) as error:
            raise InputError(f"--weights {uri!r} cannot be read: {_first_cause(error)}") from error
        _staged[uri] = local
    return _staged[uri]
