"""Loose files as inputs: patterns and list files matched into URIs, each read to an image or an error row."""

from __future__ import annotations

import glob
import logging
import os

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import METRICS_NAMESPACE
from pipeline.contract import ERRORS, error_row, image_id, path_uri, printable, uri_path
from pipeline.storage import InputError, ReadError, expand, first_cause, is_local, read_bytes

log = logging.getLogger(__name__)


def check_patterns(patterns: list[str], *, allow_empty: bool = False) -> list[str]:
    """Each pattern's first match; fails when one matches nothing (one listing call per pattern).

    A local folder named as it is (`photos`, no wildcard) is refused: it would be one
    `not_a_file` errors row, and what to label under it is for the user to say (DIR/**).
    With allow_empty (--watch, where files are still to come) a pattern may match nothing
    yet, but it must be listable.
    """
    first = []
    for pattern in patterns:
        if is_local(pattern) and not glob.has_magic(pattern) and os.path.isdir(uri_path(pattern)):
            shown = printable(pattern.rstrip("/"))
            raise InputError(
                f"--input {pattern!r} is a folder, not a pattern of files: pass --input '{shown}/**/*.jpg' "
                f"(one --input per extension), or '{shown}/**' for every entry under it (each sub-folder "
                "then an errors row); docs/inputs.md#patterns"
            )
        try:
            found = next(expand(pattern, limit=1), None)
        except (BeamIOError, OSError, ValueError) as error:
            raise InputError(f"--input {pattern!r} cannot be listed: {first_cause(error)}") from error
        if found is None and allow_empty:
            continue
        if found is None:
            raise InputError(f"--input {pattern!r} matches no files.")
        first.append(found)
    return first


def read_input_list(path: str) -> list[str]:
    """URIs from a text file, one per line; blank lines and '#' comments skipped (list_line)."""
    try:
        with FileSystems.open(path) as handle:
            text = handle.read().decode("utf-8")
    except (BeamIOError, OSError) as error:
        raise InputError(f"--input_list {path!r} cannot be read: {first_cause(error)}") from error
    except UnicodeDecodeError as error:
        raise InputError(f"--input_list {path!r} is not UTF-8 text: {error}") from error
    # Lines end at "\n" (or "\r\n"), as Beam's ReadFromText reads the same file in the job.
    uris = [uri for line in text.split("\n") if (uri := list_line(line.removesuffix("\r")))]
    if not uris:
        raise InputError(f"--input_list {path!r} lists no URIs.")
    return uris


def list_line(line: str) -> str | None:
    """The uri a line of an --input_list names, or None for a blank line or a '#' comment.

    The line is the name, spaces and all (only its line ending is not part of it). A
    local path is made absolute and spelled as the listing spells it
    (pipeline.contract.path_uri), so a file:// URI of a name whose bytes are UTF-8 becomes
    its plain path: one input, one uri and image_id, however it is written.
    """
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    return absolute(line)


def absolute(uri: str) -> str:
    """A local path made absolute (workers may run elsewhere), in its uri spelling; other URIs unchanged."""
    return path_uri(os.path.abspath(uri_path(uri))) if is_local(uri) else uri


def _listed(line: str):
    uri = list_line(line.removesuffix("\r"))
    if uri is not None:
        yield uri


def check_inputs(patterns: list[str] | None, input_list: str | None) -> list[str]:
    """The launcher's check of --input and --input_list, before anything is submitted.

    Returns:
        The first file each pattern matches, then the list's first URI: a sample of the
        inputs for the checks that read one (pipeline.job.read.shards.check_inputs).

    Raises:
        InputError: naming the pattern or list and what is wrong with it.
    """
    first = check_patterns([absolute(p) for p in patterns]) if patterns else []
    if input_list:
        first.append(absolute(read_input_list(input_list)[0]))
    return first


class MatchInputs(beam.PTransform):
    """PBegin -> every input URI once: the files matching the patterns, plus the URIs of a list file."""

    def __init__(self, patterns: list[str] | None, input_list: str | None = None):
        super().__init__()
        self._patterns = [absolute(p) for p in patterns or ()]
        self._input_list = input_list

    def expand(self, pbegin):
        sources = []
        if self._patterns:
            sources.append(
                pbegin | "Patterns" >> beam.Create(self._patterns) | "Match" >> beam.FlatMap(expand)
            )
        if self._input_list:
            sources.append(
                pbegin
                | "ReadList" >> beam.io.ReadFromText(self._input_list)
                | "ListedURIs" >> beam.FlatMap(_listed)
            )
        return tuple(sources) | "AllInputs" >> beam.Flatten() | "Dedupe" >> beam.Distinct()


class ReadImage(beam.DoFn):
    """uri -> (image_id, uri, bytes); unreadable files go to the errors output."""

    def __init__(self, reader=read_bytes):
        self._reader = reader
        self._read = Metrics.counter(METRICS_NAMESPACE, "images_read")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "failed_read")

    def process(self, uri: str):
        key = image_id(uri)
        try:
            data = self._reader(uri)
        except ReadError as error:
            self._failed.inc()
            message = printable(str(error))
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(key, uri, "read", error.error_type, message))
            return
        except Exception as error:  # a reader bug on one file must not fail the job
            self._failed.inc()
            message = printable(f"{uri}: {type(error).__name__}: {error}")
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(key, uri, "read", "read_error", message))
            return
        self._read.inc()
        yield key, uri, data


class ReadImages(beam.PTransform):
    """URIs -> {"images": (image_id, uri, bytes), "errors": rows}; each URI lands in one of them."""

    def __init__(self, reader=read_bytes):
        super().__init__()
        self._reader = reader

    def expand(self, uris):
        read = uris | "Read" >> beam.ParDo(ReadImage(self._reader)).with_outputs(ERRORS, main="images")
        return {"images": read.images, ERRORS: read[ERRORS]}
