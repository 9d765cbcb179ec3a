"""The write and commit steps: both tables' rows to Parquet files, then one commit of the run.

Workers write each table's rows as Parquet data files (zstd, provenance in every footer)
into the table's folder; nothing is visible to a reader until CommitRun, one step that
runs once after every write has finished, commits them to the Delta tables.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from pipeline import table as delta
from pipeline.contract import (
    ERRORS,
    PREDICTIONS,
    SHARD_TEMPLATE,
    SUFFIX,
    TABLES,
    errors_schema,
    predictions_schema,
)
from pipeline.job import failpoints
from pipeline.storage import first_cause

log = logging.getLogger(__name__)

# How the data files are written. fc7 rows are 16 KiB each: smaller record batches keep a
# writer's memory flat. fc7's floats are written without dictionary encoding (plain, zstd):
# a dictionary of 4096 distinct floats a row never pays, and trying one cost more time
# than the rest of the row and left larger files.
PARQUET = {
    "codec": "zstd",
    "record_batch_size": {PREDICTIONS: 256, ERRORS: 1000},
    "row_group_buffer_size": 64 * 1024 * 1024,  # WriteToParquet's default: one table per bundle or 64 MiB
    "no_dictionary": ("fc7",),
}


def schemas(provenance: dict[str, str], *, embeddings: bool):
    """Each table's Arrow schema, provenance in its metadata."""
    return {
        PREDICTIONS: predictions_schema(embeddings=embeddings, provenance=provenance),
        ERRORS: errors_schema(provenance=provenance),
    }


class WriteOutputs(beam.PTransform):
    """{"predictions": rows, "errors": rows} -> {table: the URIs of the data files written}.

    The files go into OUT/predictions/ and OUT/errors/ under this run's prefix
    (pipeline.table.data_prefix); they become part of the output only when CommitRun commits them.
    """

    def __init__(self, output: str, *, provenance: dict[str, str], embeddings: bool, run: int, token: str):
        super().__init__()
        self._output = output
        self._schemas = schemas(provenance, embeddings=embeddings)
        self._run = run
        self._token = token

    def expand(self, tables):
        return {
            table: tables[table]
            | f"Write{table.title()}"
            >> _WriteParquet(
                delta.data_prefix(self._output, table, self._run, self._token),
                self._schemas[table],
                PARQUET["record_batch_size"][table],
            )
            for table in TABLES
        }


class _WriteParquet(beam.PTransform):
    """Rows -> Parquet data files under a prefix; the URIs written. Beam's WriteToParquet with PARQUET's
    column encodings, which it does not take: rows to Arrow tables, then a file sink of those tables."""

    def __init__(self, prefix: str, schema: pa.Schema, batch: int):
        super().__init__()
        self._prefix = prefix
        self._schema = schema
        self._batch = batch

    def expand(self, rows):
        limit = PARQUET["row_group_buffer_size"]
        return (
            rows
            | "ToArrow" >> beam.ParDo(_RowsToTables(self._schema, self._batch, limit))
            | "Files" >> beam.io.Write(_ParquetSink(self._prefix, self._schema))
        )


class _RowsToTables(beam.DoFn):
    """Row dicts -> Arrow tables of `batch`-row record batches; one per bundle or per `limit` bytes."""

    def __init__(self, schema: pa.Schema, batch: int, limit: int):
        self._schema = schema
        self._batch = batch
        self._limit = limit

    def start_bundle(self):
        self._rows: list[dict] = []
        self._batches: list[pa.RecordBatch] = []
        self._bytes = 0

    def process(self, row):
        self._rows.append(row)
        if len(self._rows) >= self._batch:
            self._flush_rows()
            if self._bytes >= self._limit:
                yield self._table()

    def finish_bundle(self):
        if self._rows:
            self._flush_rows()
        if self._batches:
            yield GlobalWindows.windowed_value(self._table())

    def _flush_rows(self) -> None:
        batch = rows_to_batch(self._rows, self._schema)
        self._batches.append(batch)
        self._bytes += batch.nbytes
        self._rows = []

    def _table(self) -> pa.Table:
        table = pa.Table.from_batches(self._batches, schema=self._schema)
        self._batches, self._bytes = [], 0
        return table


def rows_to_batch(rows: list[dict], schema: pa.Schema) -> pa.RecordBatch:
    """Row dicts -> one Arrow record batch of `schema`."""
    columns = [pa.array([row[name] for row in rows], type=schema.field(name).type) for name in schema.names]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class _ParquetSink(FileBasedSink):
    """Arrow tables -> one Parquet file per shard, zstd, fc7 without a dictionary (PARQUET)."""

    def __init__(self, prefix: str, schema: pa.Schema):
        super().__init__(
            prefix,
            coder=None,
            file_name_suffix=SUFFIX,
            num_shards=0,
            shard_name_template=SHARD_TEMPLATE,
            mime_type="application/x-parquet",
            compression_type=CompressionTypes.UNCOMPRESSED,  # Parquet compresses its own pages
        )
        self._schema = schema

    def open(self, temp_path):
        handle = super().open(temp_path)
        return handle, parquet_writer(handle, self._schema)

    def write_record(self, file_handle, value: pa.Table):
        file_handle[1].write_table(value)

    def close(self, file_handle):
        handle, writer = file_handle
        writer.close()
        handle.close()


def parquet_writer(handle, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer of a table's data file into an open handle, with PARQUET's codec and encodings."""
    plain = PARQUET["no_dictionary"]
    dictionary = [path for path in _leaf_paths(schema) if path.split(".")[0] not in plain]
    return pq.ParquetWriter(
        handle,
        schema,
        compression=PARQUET["codec"],
        use_dictionary=dictionary,
        # As WriteToParquet writes them: lists keep Arrow's element name ("item").
        use_compliant_nested_type=False,
        use_deprecated_int96_timestamps=False,
    )


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Each Parquet column's dotted path (labels.list.item.wnid), as ParquetWriter names them."""

    def walk(prefix: str, kind: pa.DataType):
        if pa.types.is_struct(kind):
            for field in kind:
                yield from walk(f"{prefix}.{field.name}", field.type)
        elif pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind):
            yield from walk(f"{prefix}.list.{kind.value_field.name}", kind.value_type)
        else:
            yield prefix

    return [path for field in schema for path in walk(field.name, field.type)]


class CommitRun(beam.PTransform):
    """{table: written file URIs} -> one commit of the run to both Delta tables, then cleanup.

    Runs once, after every write has finished (it waits on the whole of both file lists),
    wherever the runner puts it: a worker on Dataflow or Flink, the launcher's process on
    the DirectRunner. The protocol and its order are pipeline.table's; a retry of this
    step commits nothing twice.
    """

    def __init__(self, spec: delta.RunCommit, s3: dict | None = None):
        super().__init__()
        self._spec = spec
        self._s3 = dict(s3 or {})

    def expand(self, written):
        named = [
            written[table] | f"Name{table.title()}Files" >> beam.Map(lambda uri, table=table: (table, uri))
            for table in TABLES
        ]
        return (
            named
            | "AllFiles" >> beam.Flatten()
            | "Together" >> beam.combiners.ToList()
            | "Commit" >> beam.Map(commit_run, self._spec, self._s3)
        )


def commit_run(written: list[tuple[str, str]], spec: delta.RunCommit, s3: dict) -> int:
    """The commit step's work: the run's files found, the two commits in order, cleanup. Returns the run.

    `written` (the sinks' own list of the files they finalized) only orders this step after
    every write: a retried finalize lists only the files it renamed itself, so the files are
    found by this launch's unique prefix instead, and checked to be a complete set of shards.
    """
    del written
    failpoints.hit("commit")  # every data file is written; nothing committed
    files = {
        table: [
            delta.describe(spec.output, table, uri)
            for uri in delta.run_files(spec.output, table, spec.run, spec.token)
        ]
        for table in TABLES
    }
    commit = dataclasses.replace(spec, files=files)
    options = delta.storage_options(spec.output, s3)
    if delta.commit_errors(commit, options):
        log.info("run %d: errors committed (%d file(s))", spec.run, len(files[ERRORS]))
    failpoints.hit("commit.between")  # the errors commit is in, the predictions one is not
    if delta.commit_predictions(commit, options):
        log.info("run %d: predictions committed (%d file(s))", spec.run, len(files[PREDICTIONS]))
    failpoints.hit("committed")
    delta.clean(spec.output, spec.provenance, options, before=lambda table: failpoints.hit("cleanup"))
    for table in TABLES:
        remove_empty_temp_dirs(delta.table_uri(spec.output, table))
    return spec.run


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


def remove_empty_temp_dirs(folder: str) -> None:
    """Removes the empty `beam-temp-*` folders a local table folder can keep after retried bundles.

    Beam's file sinks make a uniquely named temp folder per (attempt of) their
    initialisation and delete only the one the final write used. Object stores have no
    empty folders; locally, rmdir only ever removes an empty one, so a folder another
    job is still writing into is left alone.
    """
    if "://" in folder or not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(f"beam-temp-{delta.DATA_PREFIX}"):
            try:
                os.rmdir(os.path.join(folder, name))
            except OSError:
                continue
