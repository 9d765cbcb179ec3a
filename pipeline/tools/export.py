"""Exports an output's fc7 as the embeddings folder clip-retrieval and autofaiss read (npy + Parquet).

    python -m pipeline.export --to laion OUT DEST [--dtype float16|float32] [--rows_per_file N] [--overwrite]

``--to laion`` writes the layout of clip-retrieval's inference output, which its back end
reads, autofaiss indexes (``--embeddings DEST/img_emb``, faiss id = row across the files in
name order) and embedding-reader reads with the metadata beside (``parquet_npy``):

    DEST/img_emb/img_emb_N.npy          (rows, 4096) fc7 as float16 (default) or float32
    DEST/metadata/metadata_N.parquet    image_id, uri, label, score (the top label), one row per npy row

File N holds rows N * rows_per_file onwards of the predictions, in shard order; N is
zero-padded to the digits of the file count, as clip-retrieval pads it, so name order is
row order. The vectors are fc7 as the predictions hold it, not L2-normalised (clip-retrieval
normalises its own before writing). The output is streamed: ``BATCH_ROWS`` rows of fc7 are
held at a time, whatever the output's size.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from numpy.lib import format as npy_format

from pipeline import table as delta
from pipeline.contract import (
    EMBEDDING_KEYS,
    PREDICTIONS,
    UNTRAINED_WARNING,
    decode_provenance,
    disagreements,
    encode_provenance,
    is_untrained,
)
from pipeline.tools.index import BATCH_ROWS

LAION = "laion"
FORMATS = (LAION,)
DTYPES = ("float16", "float32")
DTYPE = "float16"  # clip-retrieval's default: half the disk of float32
# 100,000 rows of 4096-d are 800 MB of float16 per file: files a worker can copy and
# memory-map, while 100 million images still make only a thousand of them.
ROWS_PER_FILE = 100_000
EMB_DIR, META_DIR = "img_emb", "metadata"
EMB_PREFIX, META_PREFIX = "img_emb_", "metadata_"
METADATA_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)
_COLUMNS = ["image_id", "uri", "labels", "fc7"]


class ExportError(ValueError):
    """An output that cannot be exported, or a destination that would be overwritten."""


@dataclasses.dataclass(frozen=True)
class Export:
    """What an export wrote: `count` rows in `files` npy/metadata pairs of up to `rows_per_file` rows."""

    dest: str
    count: int
    files: int
    rows_per_file: int
    dtype: str
    provenance: dict[str, str]


def predictions_shards(output: str) -> tuple[list[str], int, int, dict[str, str]]:
    """(shard paths, row count, fc7 width, provenance) of an output's predictions, checked for fc7.

    Raises:
        ExportError: no predictions shards, a shard without fc7, or shards whose fc7 differ.
    """
    if "://" not in output and not os.path.isdir(output):
        raise ExportError(
            f"{output} does not exist; pass the --output directory of a pipeline.run made with --embeddings."
        )
    try:
        files = delta.reader_files(output, PREDICTIONS)
    except delta.TableError as error:
        raise ExportError(str(error)) from error
    if not files:
        raise ExportError(f"{output}: the predictions table holds no files.")
    count, dims, first = 0, set(), None
    for path in files:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            parquet = pq.ParquetFile(handle)
            schema, count = parquet.schema_arrow, count + parquet.metadata.num_rows
        if "fc7" not in schema.names or not pa.types.is_fixed_size_list(schema.field("fc7").type):
            raise ExportError(
                f"{path} has no fc7 column; re-run pipeline.run with --embeddings. Received columns: "
                f"{schema.names}"
            )
        dims.add(schema.field("fc7").type.list_size)
        provenance = decode_provenance(schema.metadata)
        if first is None:
            first = provenance
        elif differences := disagreements(first, provenance, EMBEDDING_KEYS):
            raise ExportError(
                f"the predictions in {output} disagree on {'; '.join(differences)} ({files[0]} -> {path}): "
                "their fc7 are not comparable. Export the output of one run."
            )
    if len(dims) > 1:
        raise ExportError(f"the predictions hold fc7 of several sizes {sorted(dims)}; export one run.")
    return files, count, dims.pop(), first


def read_batches(files: list[str], *, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """image_id, uri, labels and fc7 of every shard in order, `batch_rows` rows at a time."""
    for path in files:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            # pre_buffer=False: newer pyarrow would otherwise read a row group's whole columns ahead.
            yield from pq.ParquetFile(handle, pre_buffer=False).iter_batches(batch_rows, columns=_COLUMNS)


def file_names(index: int, files: int) -> tuple[str, str]:
    """(npy path, metadata path) of file `index` of `files`, relative to DEST."""
    number = str(index).zfill(len(str(files)))
    return (
        os.path.join(EMB_DIR, f"{EMB_PREFIX}{number}.npy"),
        os.path.join(META_DIR, f"{META_PREFIX}{number}.parquet"),
    )


def _existing(dest: str) -> list[str]:
    """Files of an earlier export in `dest`: what --overwrite deletes."""
    found = []
    for folder, prefix, suffix in ((EMB_DIR, EMB_PREFIX, ".npy"), (META_DIR, META_PREFIX, ".parquet")):
        path = os.path.join(dest, folder)
        if os.path.isdir(path):
            found += [
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.startswith(prefix) and name.endswith(suffix)
            ]
    return found


def check_dest(dest: str, *, overwrite: bool) -> None:
    """Refuses a remote or non-empty `dest`; with overwrite, deletes an earlier export's files instead.

    Raises:
        ExportError: naming DEST and what to do.
    """
    if "://" in dest:
        raise ExportError(f"DEST must be a local directory (copy it afterwards). Received: {dest!r}")
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise ExportError(f"DEST {dest} is a file; pass a directory.")
    if os.path.isdir(dest) and os.listdir(dest):
        if not overwrite:
            raise ExportError(
                f"DEST {dest} is not empty; pass an empty or new directory, or --overwrite to replace "
                f"the {EMB_DIR}/ and {META_DIR}/ files of an earlier export there."
            )
        for path in _existing(dest):
            os.remove(path)


def _top_labels(labels: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(label, score) of each row's first (best) label; pipeline.run writes top_k >= 1 of them."""
    best = pc.list_element(labels, 0)
    return pc.struct_field(best, "label"), pc.struct_field(best, "score")


class _Writer:
    """One npy file and its metadata Parquet, filled batch by batch: the npy header first, then rows.

    The metadata footer carries the predictions' provenance (weights, resize, precision) under
    the same keys, so an export says which model its vectors came from.
    """

    def __init__(
        self, dest: str, index: int, files: int, rows: int, dim: int, dtype: np.dtype, schema: pa.Schema
    ):
        emb, meta = file_names(index, files)
        self.paths = [os.path.join(dest, emb), os.path.join(dest, meta)]
        self.rows, self.written, self.dtype = rows, 0, dtype
        self._npy = open(self.paths[0], "wb")  # closed in close()
        header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dim)}
        npy_format.write_array_header_1_0(self._npy, header)
        self.schema = schema
        self._meta = pq.ParquetWriter(self.paths[1], schema, compression="zstd")

    def write(self, batch: pa.RecordBatch, vectors: np.ndarray) -> None:
        self._npy.write(np.ascontiguousarray(vectors, dtype=self.dtype).tobytes())
        label, score = _top_labels(batch.column("labels"))
        columns = [batch.column("image_id"), batch.column("uri"), label, score]
        self._meta.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self.written += len(vectors)

    def close(self) -> None:
        self._npy.close()
        self._meta.close()


def export_laion(
    output: str,
    dest: str,
    *,
    dtype: str = DTYPE,
    rows_per_file: int = ROWS_PER_FILE,
    overwrite: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> Export:
    """Writes `output`'s fc7 and top labels to `dest` in clip-retrieval's embeddings layout.

    Args:
      output: a pipeline.run output directory (local, gs://, s3://) made with --embeddings.
      dest: a local directory, new or empty (or holding an earlier export, with overwrite).
      dtype: "float16" (clip-retrieval's) or "float32" (fc7 exactly as the predictions hold it).
      rows_per_file: rows per npy/metadata pair.
      overwrite: replace the img_emb/ and metadata/ files of an earlier export in dest.
      batch_rows: rows read and written at once.

    Raises:
        ExportError: a bad argument, an output without fc7, a non-empty dest, or fc7 values
          that float16 cannot hold. Files written before the error are deleted.
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {DTYPES}. Received: dtype={dtype!r}")
    if rows_per_file < 1 or batch_rows < 1:
        raise ExportError(
            f"rows_per_file and batch_rows must be at least 1. Received: rows_per_file={rows_per_file}, "
            f"batch_rows={batch_rows}"
        )
    files, count, dim, provenance = predictions_shards(output)
    if count == 0:
        raise ExportError(f"{output} holds 0 predictions rows: there is nothing to export.")
    check_dest(dest, overwrite=overwrite)
    created = [path for path in _folders(dest) if not os.path.isdir(path)]
    for path in created:
        os.makedirs(path)
    n_files = math.ceil(count / rows_per_file)
    schema = METADATA_SCHEMA.with_metadata(encode_provenance(provenance))
    limit = float(np.finfo(np.float16).max) if dtype == "float16" else math.inf
    written: list[str] = []
    writer: _Writer | None = None
    try:
        for batch in read_batches(files, batch_rows=batch_rows):
            vectors = batch.column("fc7").flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            if len(vectors) and (peak := float(np.abs(vectors).max())) > limit:
                raise ExportError(
                    f"fc7 holds values up to {peak:.6g}, beyond float16's {limit:.0f}; export with "
                    "--dtype float32."
                )
            start = 0
            while start < len(vectors):  # a batch can end one file and start the next
                if writer is None:
                    index = len(written) // 2
                    if index == n_files:
                        raise _shards_changed(output)
                    rows = min(rows_per_file, count - index * rows_per_file)
                    writer = _Writer(dest, index, n_files, rows, dim, np.dtype(dtype), schema)
                    written += writer.paths
                take = min(writer.rows - writer.written, len(vectors) - start)
                writer.write(batch.slice(start, take), vectors[start : start + take])
                start += take
                if writer.written == writer.rows:
                    writer.close()
                    writer = None
        if writer is not None or len(written) != 2 * n_files:
            raise _shards_changed(output)
    except BaseException:
        # No half export is left behind: a new DEST is as it was, so the same command can run again.
        if writer is not None:
            writer.close()
        for path in written:
            os.remove(path)
        for path in reversed(created):
            os.rmdir(path)
        raise
    return Export(dest, count, n_files, rows_per_file, dtype, provenance)


def _folders(dest: str) -> list[str]:
    """DEST and its two folders, parents first."""
    return [dest, os.path.join(dest, EMB_DIR), os.path.join(dest, META_DIR)]


def _shards_changed(output: str) -> ExportError:
    # The npy headers were written from the footers' row counts, so the rows read must match them.
    return ExportError(
        f"{output}: the shards hold other rows than their footers count (did a job write there during "
        "the export?); export again when it has finished."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.split("\n")[0])
    parser.add_argument("--to", required=True, choices=FORMATS, help="layout to write (clip-retrieval's)")
    parser.add_argument("output", metavar="OUT", help="pipeline.run's --output, made with --embeddings")
    parser.add_argument("dest", metavar="DEST", help="local directory to write, new or empty")
    parser.add_argument("--dtype", choices=DTYPES, default=DTYPE, help="npy dtype (default: float16)")
    parser.add_argument(
        "--rows_per_file", type=int, default=ROWS_PER_FILE, help="rows per npy/metadata file pair"
    )
    parser.add_argument("--batch_rows", type=int, default=BATCH_ROWS, help="rows read at once")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in DEST")
    args = parser.parse_args(argv)
    from pipeline import logs

    logs.configure()
    try:
        done = export_laion(
            args.output,
            args.dest,
            dtype=args.dtype,
            rows_per_file=args.rows_per_file,
            overwrite=args.overwrite,
            batch_rows=args.batch_rows,
        )
    except (ExportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"exported {done.count} rows of fc7 ({done.dtype}) from {args.output} to {done.dest}: "
        f"{done.files} img_emb/metadata file pair(s) of up to {done.rows_per_file} rows"
    )
    if is_untrained(done.provenance):
        print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
