"""The write step: both tables to Parquet (zstd, provenance in every footer); the output folder's upkeep."""

from __future__ import annotations

import logging
import os

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet

from pipeline.contract import (
    ERRORS,
    PREDICTIONS,
    SHARD_TEMPLATE,
    SUFFIX,
    TABLES,
    errors_schema,
    predictions_schema,
    shard_prefix,
)
from pipeline.storage import first_cause

log = logging.getLogger(__name__)


class WriteOutputs(beam.PTransform):
    """{"predictions": rows, "errors": rows} -> the two Parquet tables, zstd, provenance in each footer."""

    def __init__(self, output: str, *, provenance: dict[str, str], embeddings: bool, attempt: int = 0):
        super().__init__()
        self._output = output
        self._provenance = provenance
        self._embeddings = embeddings
        self._attempt = attempt

    def expand(self, tables):
        common = {"codec": "zstd", "file_name_suffix": SUFFIX, "shard_name_template": SHARD_TEMPLATE}
        schemas = {
            PREDICTIONS: predictions_schema(embeddings=self._embeddings, provenance=self._provenance),
            ERRORS: errors_schema(provenance=self._provenance),
        }
        # fc7 rows are 16 KiB each: smaller record batches keep a writer's memory flat.
        batch_rows = {PREDICTIONS: 256, ERRORS: 1000}
        return {
            table: tables[table]
            | f"Write{table.title()}"
            >> WriteToParquet(
                shard_prefix(self._output, table, self._attempt),
                schemas[table],
                record_batch_size=batch_rows[table],
                **common,
            )
            for table in TABLES
        }


def check_output_writable(output: str) -> None:
    """Creates the output directory if needed and proves a file can be written there.

    Raises:
        OutputError: naming the directory and why.
    """
    probe = FileSystems.join(output, f".write-check-{os.getpid()}")
    try:
        if "://" not in output:
            os.makedirs(output, exist_ok=True)
        with FileSystems.create(probe) as handle:
            handle.write(b"ok")
        FileSystems.delete([probe])
    except (BeamIOError, OSError) as error:
        raise OutputError(f"--output {output!r} is not writable: {first_cause(error)}") from error


class OutputError(ValueError):
    """An output directory the job cannot write."""


def remove_shards(paths: tuple[str, ...] | list[str]) -> None:
    if paths:
        log.info("replacing %d existing output file(s)", len(paths))
        FileSystems.delete(list(paths))


def remove_empty_temp_dirs(output: str) -> None:
    """Removes the empty `beam-temp-*` folders a local output can keep after retried bundles.

    Beam's file sinks make a uniquely named temp folder per (attempt of) their
    initialisation and delete only the one the final write used. Object stores have no
    empty folders; locally, rmdir only ever removes an empty one, so a folder another
    job is still writing into is left alone.
    """
    if "://" in output or not os.path.isdir(output):
        return
    for name in os.listdir(output):
        if name.startswith(tuple(f"beam-temp-{table}" for table in TABLES)):
            try:
                os.rmdir(os.path.join(output, name))
            except OSError:
                continue
