"""Loose files as inputs: patterns and list files matched into URIs, each read to an image or an error row."""

from __future__ import annotations

import logging
import os

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import METRICS_NAMESPACE
from pipeline.contract import ERRORS, error_row, image_id
from pipeline.storage import InputError, ReadError, first_cause, read_bytes

log = logging.getLogger(__name__)


def check_patterns(patterns: list[str]) -> list[str]:
    """Each pattern's first match; fails when one matches nothing (one listing call per pattern)."""
    first = []
    for pattern in patterns:
        try:
            result = FileSystems.match([pattern], limits=[1])[0]
        except (BeamIOError, OSError, ValueError) as error:
            raise InputError(f"--input {pattern!r} cannot be listed: {first_cause(error)}") from error
        if not result.metadata_list:
            raise InputError(f"--input {pattern!r} matches no files.")
        first.append(result.metadata_list[0].path)
    return first


def read_input_list(path: str) -> list[str]:
    """URIs from a text file, one per line; blank lines and '#' comments skipped."""
    try:
        with FileSystems.open(path) as handle:
            text = handle.read().decode("utf-8")
    except (BeamIOError, OSError) as error:
        raise InputError(f"--input_list {path!r} cannot be read: {first_cause(error)}") from error
    except UnicodeDecodeError as error:
        raise InputError(f"--input_list {path!r} is not UTF-8 text: {error}") from error
    uris = [line.strip() for line in text.splitlines()]
    uris = [u for u in uris if u and not u.startswith("#")]
    if not uris:
        raise InputError(f"--input_list {path!r} lists no URIs.")
    return uris


def absolute(uri: str) -> str:
    """A local path made absolute (workers may run elsewhere); URIs with a scheme unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def _listed(line: str):
    uri = line.strip()
    if uri and not uri.startswith("#"):
        yield absolute(uri)


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
                pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> fileio.MatchAll()
                | "Paths" >> beam.Map(lambda metadata: metadata.path)
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
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(key, uri, "read", error.error_type, str(error)))
            return
        except Exception as error:  # a reader bug on one file must not fail the job
            self._failed.inc()
            message = f"{uri}: {type(error).__name__}: {error}"
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
