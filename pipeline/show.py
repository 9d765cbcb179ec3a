"""Prints a short table of a job's first results and errors: `python -m pipeline.show OUT`."""

from __future__ import annotations

import argparse
import os
import sys

import pyarrow.parquet as pq

from pipeline.outputs import (
    ERRORS,
    PREDICTIONS,
    UNTRAINED_WARNING,
    decode_provenance,
    is_untrained,
    match,
    shard_glob,
)


def _read(output: str, table: str):
    files = match(shard_glob(output, table))
    return pq.ParquetDataset(files).read() if files else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.show", description=__doc__)
    parser.add_argument("output", help="the job's --output directory (local)")
    parser.add_argument("--rows", type=int, default=10, help="rows to show")
    args = parser.parse_args(argv)
    predictions = _read(args.output, PREDICTIONS)
    errors = _read(args.output, ERRORS)
    if predictions is None and errors is None:
        print(f"error: no predictions-*.parquet or errors-*.parquet in {args.output}", file=sys.stderr)
        return 2
    if predictions is not None:
        if is_untrained(decode_provenance(predictions.schema.metadata)):
            print(f"({UNTRAINED_WARNING})")
        print(f"{len(predictions)} labelled:")
        print(f"  {'image':<28} {'size':>11}  top-1 (score)              top-2 (score)")
        for row in predictions.slice(0, args.rows).to_pylist():
            first, second = row["labels"][0], row["labels"][1] if len(row["labels"]) > 1 else None
            size = f"{row['width']}x{row['height']}"
            cells = [f"{x['label'][:18]} ({x['score']:.3f})" for x in (first, second) if x]
            print(
                f"  {os.path.basename(row['uri'])[:28]:<28} {size:>11}  "
                + "  ".join(f"{c:<25}" for c in cells)
            )
    if errors is not None and len(errors):
        print(f"{len(errors)} failed:")
        for row in errors.slice(0, args.rows).to_pylist():
            print(f"  {os.path.basename(row['uri'])[:28]:<28} {row['stage']}/{row['error_type']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
