"""Converts a vgg16-beam 0.1 output (flat Parquet shards) into Delta tables: `python -m pipeline.upgrade OUT`.

A 0.1 output holds `OUT/predictions-*-of-*.parquet` and `OUT/errors-*-of-*.parquet`
(several attempts' shards after --resume). Each shard is copied into its table's folder
and all of them are committed as run 1 of the tables, in the protocol's order
(pipeline.table); only then are the flat shards deleted. Killed at any point, the flat
shards are still there (a rerun starts over) or the tables hold every row.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from pipeline import logs
from pipeline import table as delta
from pipeline.contract import ERRORS, PREDICTIONS, TABLES, decode_provenance, errors_schema, join, legacy_glob
from pipeline.storage import first_cause, match, read_schema

log = logging.getLogger(__name__)
LEGACY = "legacy-"


def upgrade(output: str) -> dict[str, int]:
    """Converts `output`; returns the files committed per table.

    Raises:
        delta.TableError: nothing to convert, tables already there, or a shard that cannot be read.
    """
    shards = {table: match(legacy_glob(output, table)) for table in TABLES}
    if not any(shards.values()):
        raise delta.TableError(f"{output} holds no flat predictions-*.parquet or errors-*.parquet shards.")
    found = delta.snapshot(output)
    if found.exists:
        raise delta.TableError(
            f"{output} already holds Delta tables; move the flat shards elsewhere and convert them there."
        )
    schemas, provenance = {}, {}
    for table in TABLES:
        for path in shards[table]:
            try:
                schema = read_schema(path)
            except Exception as error:
                why = first_cause(error)
                raise delta.TableError(f"{path} cannot be read ({why}); not converted.") from error
            schemas.setdefault(table, schema)
            provenance = provenance or decode_provenance(schema.metadata)
    schemas.setdefault(ERRORS, errors_schema(provenance=provenance))
    if PREDICTIONS not in schemas:
        raise delta.TableError(f"{output} has errors shards but no predictions shard; not converted.")
    files: dict[str, list[delta.DataFile]] = {table: [] for table in TABLES}
    for table in TABLES:
        if "://" not in output:
            os.makedirs(delta.table_uri(output, table), exist_ok=True)
        for path in shards[table]:
            name = LEGACY + path.rstrip("/").rpartition("/")[2]
            copy = join(delta.table_uri(output, table), name)
            FileSystems.copy([path], [copy])
            files[table].append(delta.describe(output, table, copy))
    delta.replace_with(output, files, schemas, provenance)
    delta.clean(output, provenance)
    FileSystems.delete([path for table in TABLES for path in shards[table]])
    return {table: len(files[table]) for table in TABLES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.upgrade", description=__doc__.split("\n")[0])
    parser.add_argument("output", help="the 0.1 output folder (local, gs://, s3://)")
    args = parser.parse_args(argv)
    logs.configure()
    try:
        counts = upgrade(args.output)
    except (delta.TableError, BeamIOError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"converted {args.output}: {counts[PREDICTIONS]} predictions and {counts[ERRORS]} errors file(s) "
        f"are now the tables {PREDICTIONS}/ and {ERRORS}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
