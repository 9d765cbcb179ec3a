"""Prints a short table of a job's first results and errors: `python -m pipeline.show OUT`."""

from __future__ import annotations

import argparse
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import logs
from pipeline import table as delta
from pipeline.contract import (
    ERRORS,
    PREDICTIONS,
    UNTRAINED_WARNING,
    decode_provenance,
    is_untrained,
)

# The columns printed: only these are read, never fc7 (16 KiB a row).
PREDICTION_COLUMNS = ("uri", "width", "height", "labels")
ERROR_COLUMNS = ("uri", "stage", "error_type")
NAME_WIDTH = 28


class Table:
    """A table's committed files: row count and provenance from their footers, first rows on demand."""

    def __init__(self, files: list[str]):
        self.files = files
        self.metadata = pq.read_schema(files[0]).metadata
        self.rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)

    def head(self, count: int, columns: tuple[str, ...]) -> list[dict]:
        """The first `count` rows, in shard order, reading only `columns` and only as far as needed."""
        rows: list[dict] = []
        for path in self.files:
            parquet = pq.ParquetFile(path, pre_buffer=False)  # only as far as the rows shown
            for batch in parquet.iter_batches(batch_size=max(count, 1), columns=list(columns)):
                rows += pa.Table.from_batches([batch]).to_pylist()[: count - len(rows)]
                if len(rows) >= count:
                    return rows
        return rows


def _table(found: delta.Snapshot, table: str) -> Table | None:
    files = found.files(table)
    return Table(files) if files else None


def short_name(uri: str, width: int = NAME_WIDTH) -> str:
    """A uri as one cell: the file's name, or a shard member's `SHARD_NAME#KEY` (pipeline.job.read.shards).

    A member's key is what tells the rows of one shard apart, so a name too long to fit
    loses its start, not its key; a file's name loses its end, as it always has.
    """
    path, hash_, member = uri.partition("#")
    name = os.path.basename(path) + hash_ + member
    if len(name) <= width:
        return name
    return "..." + name[-(width - 3) :] if hash_ else name[:width]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.show", description=__doc__)
    parser.add_argument("output", help="the job's --output directory (local)")
    parser.add_argument("--rows", type=int, default=10, help="rows to show")
    args = parser.parse_args(argv)
    logs.configure()
    try:
        found = delta.snapshot(args.output)
        if not found.exists:
            delta.reader_files(args.output, PREDICTIONS)  # raises, saying what to pass
    except delta.TableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    predictions = _table(found, PREDICTIONS)
    errors = _table(found, ERRORS)
    if predictions is None and errors is None:
        print(f"{args.output}: the tables hold no rows")
        return 0
    if predictions is not None:
        if is_untrained(decode_provenance(predictions.metadata)):
            print(f"({UNTRAINED_WARNING})")
        print(f"{predictions.rows} labelled:")
        print(f"  {'image':<{NAME_WIDTH}} {'size':>11}  top-1 (score)              top-2 (score)")
        for row in predictions.head(args.rows, PREDICTION_COLUMNS):
            first, second = row["labels"][0], row["labels"][1] if len(row["labels"]) > 1 else None
            size = f"{row['width']}x{row['height']}"
            cells = [f"{x['label'][:18]} ({x['score']:.3f})" for x in (first, second) if x]
            print(
                f"  {short_name(row['uri']):<{NAME_WIDTH}} {size:>11}  "
                + "  ".join(f"{c:<25}" for c in cells)
            )
    if errors is not None and errors.rows:
        print(f"{errors.rows} failed:")
        for row in errors.head(args.rows, ERROR_COLUMNS):
            print(f"  {short_name(row['uri']):<{NAME_WIDTH}} {row['stage']}/{row['error_type']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
