"""The output's two Delta Lake tables: where they live, how a run commits to them, what a reader sees.

An output folder OUT holds two Delta tables (delta-rs, the `deltalake` package), OUT/predictions/
and OUT/errors/. Beam's workers write Parquet data files into the table folders; a file
is part of the output only once a commit in the table's `_delta_log/` adds it, so
whatever a run wrote before its commit is invisible to every reader.

The commit protocol. Every run has a number N (1 + the highest run any table has seen),
recorded in each of its commits as Delta's application transaction (`txn`, app id
APP_ID, version N) and in the commit's metadata (RUN_KEY). At the end of the job one step
of the pipeline (CommitRun in pipeline.job.write) commits, in this order:

1. the errors table: a fresh run and `--resume --retry_errors` replace every file (their
   files hold every errors row that stays, the carried ones too); `--resume` appends. The
   commit's metadata also records the predictions files of step 2 (PENDING_KEY).
2. the predictions table: a fresh run replaces every file; `--resume` appends.
3. cleanup: table properties set to the run's provenance; files that no version of a
   table references any more (replaced files, files of runs that never committed) deleted.

A run is committed once step 2 is. A Delta transaction covers one table, so the pair is
made safe by its order and by rolling forward: killed between 1 and 2, the errors table
is a version ahead; `snapshot` then reads it as of the last committed run (the version
before step 1), and the next run (or a retry of the commit step) first completes step 2
from the list kept in step 1. Errors go first because the only rows a run removes are
errors rows (retried ones): whatever the kill point, an input is never in both tables,
and a reader that opens the errors table alone, between 1 and 2, sees fewer rows, never
a duplicate. Every step checks the table's txn version first, so a retried step commits
nothing twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    Transaction,
    create_table_with_add_actions,
)

from pipeline.contract import ERRORS, METADATA_PREFIX, PREDICTIONS, SUFFIX, TABLES, join

log = logging.getLogger(__name__)

APP_ID = "vgg16-beam"
RUN_KEY = f"{METADATA_PREFIX}run"
PENDING_KEY = f"{METADATA_PREFIX}pending_predictions"
MODE_KEY = f"{METADATA_PREFIX}predictions_mode"
DATA_PREFIX = "part-"
_SHARD = re.compile(r"-(\d+)-of-(\d+)\.parquet$")


class TableError(ValueError):
    """An output whose tables cannot be read or completed; the message says which and why."""


def table_uri(output: str, table: str) -> str:
    """OUT/predictions or OUT/errors (local folder or bucket URI)."""
    return join(output, table)


def data_prefix(output: str, table: str, run: int, token: str) -> str:
    """The file prefix of a run's data files: `OUT/TABLE/part-r00007-TOKEN` (TOKEN: unique per launch)."""
    return join(table_uri(output, table), f"{DATA_PREFIX}r{run:05d}-{token}")


def storage_options(output: str, s3: dict[str, object] | None = None) -> dict[str, str]:
    """deltalake's storage options for an output: S3 settings from the job's S3 options (--s3_*).

    Credentials not given as options come from the environment, as for Beam's own
    filesystems (AWS_*, GOOGLE_APPLICATION_CREDENTIALS); a local output needs none.
    """
    if not output.startswith("s3://"):
        return {}
    s3 = s3 or {}
    found: dict[str, str] = {}
    endpoint = s3.get("s3_endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        # Both names: deltalake lets an AWS_ENDPOINT_URL_S3 in the environment win over the
        # generic one, as boto3 does, but --s3_endpoint_url must win over the environment.
        found["AWS_ENDPOINT_URL"] = found["AWS_ENDPOINT_URL_S3"] = str(endpoint)
        if str(endpoint).startswith("http://"):
            found["AWS_ALLOW_HTTP"] = "true"
    names = {
        "s3_access_key_id": "AWS_ACCESS_KEY_ID",
        "s3_secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "s3_session_token": "AWS_SESSION_TOKEN",
        "s3_region_name": "AWS_REGION",
    }
    for option, key in names.items():
        if s3.get(option):
            found[key] = str(s3[option])
    if "AWS_REGION" not in found and not os.environ.get("AWS_REGION"):
        found["AWS_REGION"] = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    if s3.get("s3_disable_ssl") is True or s3.get("s3_verify") is False:
        found["AWS_ALLOW_INVALID_CERTIFICATES"] = "true"
    return found


def open_table(
    uri: str, options: dict[str, str] | None = None, version: int | None = None
) -> DeltaTable | None:
    """The Delta table at uri (at `version`), or None where there is none.

    Raises:
        TableError: a table is there but cannot be read (a damaged log, no permission).
    """
    try:
        if not DeltaTable.is_deltatable(uri, storage_options=options or None):
            return None
        return DeltaTable(uri, version=version, storage_options=options or None)
    except TableNotFoundError:
        return None
    except Exception as error:  # deltalake raises DeltaError, OSError, ... for a damaged table
        raise TableError(f"{uri} is not a readable Delta table: {error}") from error


def run_of(table: DeltaTable | None) -> int:
    """The highest run committed to a table (0: none)."""
    if table is None:
        return 0
    return table.transaction_version(APP_ID) or 0


@dataclasses.dataclass
class Snapshot:
    """The output as of its last committed run: each table at the version a reader should see."""

    output: str
    options: dict[str, str]
    tables: dict[str, DeltaTable | None]
    run: int
    pending: int = 0  # a run whose errors commit is in but whose predictions commit is not

    def files(self, table: str) -> list[str]:
        """The URIs of a table's data files in this snapshot (none if the table does not exist)."""
        found = self.tables.get(table)
        return sorted(found.file_uris()) if found is not None else []

    @property
    def exists(self) -> bool:
        return any(found is not None for found in self.tables.values())

    @property
    def next_run(self) -> int:
        """The number of the next run: 1 + the highest any table recorded (an interrupted one too)."""
        return 1 + max(self.run, self.pending)

    def rows(self, table: str) -> int:
        found = self.tables.get(table)
        return found.count() if found is not None else 0


def snapshot(output: str, options: dict[str, str] | None = None) -> Snapshot:
    """Both tables of `output` as of its last committed run (see the module's commit protocol).

    Raises:
        TableError: a table that cannot be read.
    """
    options = storage_options(output) if options is None else options
    tables = {table: open_table(table_uri(output, table), options) for table in TABLES}
    committed = run_of(tables[PREDICTIONS])
    errors = tables[ERRORS]
    pending = 0
    if errors is not None and run_of(errors) > committed:
        pending = run_of(errors)
        tables[ERRORS] = _before_run(errors, table_uri(output, ERRORS), options, committed)
    return Snapshot(output, options, tables, committed, pending)


def _before_run(table: DeltaTable, uri: str, options, committed: int) -> DeltaTable | None:
    """The table as of its last version written by a run <= `committed` (None: it did not exist)."""
    first_later = None
    for entry in table.history():  # newest first
        run = _entry_run(entry)
        if run is not None and run > committed:
            first_later = entry["version"]
    if first_later is None or first_later == 0:
        return None
    return open_table(uri, options, version=first_later - 1)


def _entry_run(entry: dict) -> int | None:
    try:
        return int(entry[RUN_KEY])
    except (KeyError, TypeError, ValueError):
        return None


def next_run(output: str, options: dict[str, str] | None = None) -> int:
    """The number of the next run on `output`: 1 + the highest any of its tables recorded."""
    return snapshot(output, options).next_run


# ------------------------------------------------------------------- committing a run


@dataclasses.dataclass(frozen=True)
class DataFile:
    """A data file a worker wrote: its path relative to the table folder, size, mtime (ms) and rows."""

    path: str
    size: int
    modified_ms: int
    rows: int

    def action(self) -> AddAction:
        stats = json.dumps({"numRecords": self.rows})
        return AddAction(self.path, self.size, {}, self.modified_ms, True, stats)


def describe(output: str, table: str, uri: str) -> DataFile:
    """A written data file's Delta entry: its path in the table folder, size, mtime and row count."""
    from apache_beam.io.filesystems import FileSystems

    root = table_uri(output, table).rstrip("/") + "/"
    if not uri.startswith(root):
        raise ValueError(f"{uri} was written outside its table folder {root}")
    metadata = FileSystems.match([uri])[0].metadata_list[0]
    with FileSystems.open(uri, compression_type="uncompressed") as handle:
        rows = pq.read_metadata(handle).num_rows
    modified_ms = int((metadata.last_updated_in_seconds or 0) * 1000)
    return DataFile(uri[len(root) :], metadata.size_in_bytes, modified_ms, rows)


def delta_schema(schema: pa.Schema) -> Schema:
    """The Delta schema of a table's Arrow schema (fc7's fixed-size list is a Delta array<float>)."""
    return Schema.from_arrow(schema.remove_metadata())


def commit_table(
    output: str,
    table: str,
    files: list[DataFile],
    *,
    replace: bool,
    run: int,
    schema: pa.Schema,
    options: dict[str, str],
    metadata: dict[str, object],
) -> bool:
    """Adds a run's files to one table in one Delta transaction; replace: every older file removed too.

    Returns False (and commits nothing) when the table already holds run `run` or a later
    one: a retried or rolled-forward step.
    """
    uri = table_uri(output, table)
    existing = open_table(uri, options)
    if run_of(existing) >= run:
        return False
    properties = CommitProperties(
        custom_metadata={RUN_KEY: str(run), **metadata},
        app_transactions=[Transaction(APP_ID, run)],
    )
    actions = [found.action() for found in files]
    if existing is None or replace:
        # One commit: creates the table, or replaces its schema and every file at once.
        create_table_with_add_actions(
            uri,
            delta_schema(schema),
            actions,
            mode="overwrite",
            storage_options=options or None,
            commit_properties=properties,
        )
    else:
        existing.create_write_transaction(
            actions, mode="append", schema=delta_schema(schema), commit_properties=properties
        )
    return True


def run_files(output: str, table: str, run: int, token: str) -> list[str]:
    """The URIs of the data files one launch of a run wrote to a table: its prefix's whole set of shards.

    Raises:
        TableError: a shard of the set is missing (`-00003-of-00008` without `-00002-of-00008`).
    """
    from apache_beam.io.filesystems import FileSystems

    pattern = data_prefix(output, table, run, token) + "-*-of-*" + SUFFIX
    found = sorted(metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list)
    counts = {int(match.group(2)) for uri in found if (match := _SHARD.search(uri))}
    expected = next(iter(counts)) if len(counts) == 1 else None
    if found and (expected is None or len(found) != expected):
        raise TableError(
            f"{table_uri(output, table)}: run {run} wrote an incomplete set of shards ({len(found)} files, "
            f"of {sorted(counts)}); not committed"
        )
    return found


@dataclasses.dataclass(frozen=True)
class RunCommit:
    """What a run commits: its number and launch token, the files per table, modes, schemas, provenance."""

    output: str
    run: int
    files: dict[str, list[DataFile]]
    replace_errors: bool
    replace_predictions: bool
    schemas: dict[str, pa.Schema]
    provenance: dict[str, str]
    token: str = ""
    # More of the commit's metadata, in both tables' entries (a --watch pane's identity).
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)

    def pending(self) -> dict[str, object]:
        """What step 1 records for step 2 (and for a roll forward)."""
        return {
            PENDING_KEY: [dataclasses.asdict(found) for found in self.files[PREDICTIONS]],
            MODE_KEY: "replace" if self.replace_predictions else "append",
        }


def replace_with(
    output: str,
    files: dict[str, list[DataFile]],
    schemas: dict[str, pa.Schema],
    provenance: dict[str, str],
    options: dict[str, str] | None = None,
) -> int:
    """Commits these files as the next run, replacing both tables' files (for tools and tests).

    The protocol's two commits in their order, without the job's failpoints. Returns the run.
    """
    options = storage_options(output) if options is None else options
    commit = RunCommit(
        output=output,
        run=next_run(output, options),
        files=files,
        replace_errors=True,
        replace_predictions=True,
        schemas=schemas,
        provenance=provenance,
    )
    commit_errors(commit, options)
    commit_predictions(commit, options)
    return commit.run


def commit_errors(commit: RunCommit, options: dict[str, str]) -> bool:
    """Step 1: the errors table, with step 2's file list in the commit's metadata."""
    return commit_table(
        commit.output,
        ERRORS,
        commit.files[ERRORS],
        replace=commit.replace_errors,
        run=commit.run,
        schema=commit.schemas[ERRORS],
        options=options,
        metadata={**_provenance_metadata(commit.provenance), **commit.pending(), **commit.metadata},
    )


def commit_predictions(commit: RunCommit, options: dict[str, str]) -> bool:
    """Step 2: the predictions table; the run is committed once this is in."""
    return commit_table(
        commit.output,
        PREDICTIONS,
        commit.files[PREDICTIONS],
        replace=commit.replace_predictions,
        run=commit.run,
        schema=commit.schemas[PREDICTIONS],
        options=options,
        metadata={**_provenance_metadata(commit.provenance), **commit.metadata},
    )


def run_of_commit(output: str, key: str, value: str, options: dict[str, str], lookback: int) -> int | None:
    """The run whose errors commit (step 1) recorded `key: value`, in the last `lookback` versions (or None).

    How a --watch pane's commit finds itself when it is retried.
    """
    found = open_table(table_uri(output, ERRORS), options)
    if found is None:
        return None
    for entry in found.history(limit=lookback):
        if entry.get(key) == value:
            return _entry_run(entry)
    return None


def _provenance_metadata(provenance: dict[str, str]) -> dict[str, object]:
    return {f"{METADATA_PREFIX}{key}": value for key, value in provenance.items()}


def roll_forward(output: str, options: dict[str, str] | None = None) -> int:
    """Completes a run killed between its two commits (step 2 from step 1's record); 0 if none was.

    Returns the run completed.

    Raises:
        TableError: the record is missing, or its files are gone.
    """
    options = storage_options(output) if options is None else options
    errors = open_table(table_uri(output, ERRORS), options)
    predictions = open_table(table_uri(output, PREDICTIONS), options)
    pending = run_of(errors)
    if errors is None or pending <= run_of(predictions):
        return 0
    record = next((entry for entry in errors.history() if _entry_run(entry) == pending), None)
    if record is None or PENDING_KEY not in record:
        raise TableError(
            f"{table_uri(output, ERRORS)}: run {pending} committed its errors but left no record of its "
            "predictions files; run again without --resume to replace the output."
        )
    files = [DataFile(**found) for found in record[PENDING_KEY]]
    schema = _schema_of(output, files, options)
    provenance = {
        key.removeprefix(METADATA_PREFIX): str(value)
        for key, value in record.items()
        if key.startswith(METADATA_PREFIX) and key not in (RUN_KEY, PENDING_KEY, MODE_KEY)
    }
    log.info("completing run %d: its predictions commit was interrupted", pending)
    commit_table(
        output,
        PREDICTIONS,
        files,
        replace=record.get(MODE_KEY) == "replace",
        run=pending,
        schema=schema,
        options=options,
        metadata=_provenance_metadata(provenance),
    )
    return pending


def _schema_of(output: str, files: list[DataFile], options) -> pa.Schema:
    """The Arrow schema of a run's predictions files (its first file's footer)."""
    from pipeline.storage import read_schema

    if not files:
        predictions = open_table(table_uri(output, PREDICTIONS), options)
        if predictions is None:
            raise TableError(f"{table_uri(output, PREDICTIONS)}: nothing to complete the run with.")
        return predictions.schema().to_arrow()
    path = join(table_uri(output, PREDICTIONS), files[0].path)
    try:
        return read_schema(path)
    except Exception as error:
        raise TableError(
            f"{path}: a file of an interrupted run is gone or unreadable ({error}); "
            "run again without --resume to replace the output."
        ) from error


# ------------------------------------------------------------------- cleanup


def clean(
    output: str, provenance: dict[str, str] | None, options: dict[str, str] | None = None, *, before=None
) -> None:
    """Step 3: provenance into the tables' properties; files no version references any more deleted.

    Only after every run is complete (roll_forward): the files of an interrupted run's
    second step are referenced by nothing yet. before(table), if given, is called before
    each table's files are deleted (the job's failpoint).
    """
    options = storage_options(output) if options is None else options
    for table in TABLES:
        found = open_table(table_uri(output, table), options)
        if found is None:
            continue
        if provenance:
            wanted = {f"{METADATA_PREFIX}{key}": str(value) for key, value in provenance.items()}
            current = found.metadata().configuration
            if any(current.get(key) != value for key, value in wanted.items()):
                found.alter.set_table_properties(wanted, raise_if_not_exists=False)
        if before is not None:
            before(table)
        removed = found.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, full=True)
        if removed:
            log.info("%s: removed %d file(s) no version uses", table_uri(output, table), len(removed))


def table_provenance(table: DeltaTable | None) -> dict[str, str]:
    """The provenance a table's properties hold (set at cleanup; the files' footers hold it too)."""
    if table is None:
        return {}
    configuration = table.metadata().configuration
    return {
        key.removeprefix(METADATA_PREFIX): value
        for key, value in configuration.items()
        if key.startswith(METADATA_PREFIX)
    }


# ------------------------------------------------------------------- for the tools


def output_of(path: str, table: str) -> str:
    """The output folder a tool was given: `path` itself, or its parent where `path` is OUT/TABLE."""
    trimmed = path.rstrip("/")
    head, _, tail = trimmed.rpartition("/")
    if tail == table and head and open_table(trimmed, storage_options(trimmed)) is not None:
        return head
    return trimmed


def reader_files(path: str, table: str) -> list[str]:
    """The data files of `table` in its committed version, for a tool given OUT (or OUT/TABLE).

    Raises:
        TableError: no such table there, naming what to pass (and how to convert a 0.1 output).
    """
    from pipeline.contract import legacy_glob
    from pipeline.storage import match

    output = output_of(path, table)
    found = snapshot(output)
    if found.tables.get(table) is not None:
        return found.files(table)
    if match(legacy_glob(output, table)):
        raise TableError(
            f"{output} holds an output of vgg16-beam 0.1 (flat Parquet shards); convert it with: "
            f"python -m pipeline.upgrade {output}"
        )
    raise TableError(f"{path} holds no {table} table; pass the --output folder of a pipeline.run.")
