"""pipeline.tools.show: the first rows of an output, shard members by name, and never the fc7 column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.contract import UNTRAINED_WARNING, error_row, errors_schema, prediction_rows, predictions_schema
from pipeline.tools import show
from tests.pipeline.conftest import PROVENANCE, commit_output

SHARD = "/data/shards/part-00001.tar"
ROWS = 40


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("/photos/cat.png", "cat.png"),
        ("gs://bucket/a/very-long-file-name-of-a-photo-0001.jpg", "very-long-file-name-of-a-pho"),
        # A shard member: the shard's name and the whole key, which may hold a '/'.
        ("s3://b/shards/s.tar#00012/000123456", "s.tar#00012/000123456"),
        ("/data/x.tfrecord#7", "x.tfrecord#7"),
        # Too long for the column: the start goes, the key stays.
        (f"{SHARD}#00012/000000007", "...00001.tar#00012/000000007"),
        (f"{SHARD}#00012/000000007#2", "...001.tar#00012/000000007#2"),  # a repeated key's #2
        (SHARD, "part-00001.tar"),  # a whole shard's failure carries the bare shard uri
    ],
)
def test_short_name(uri, name):
    assert show.short_name(uri) == name
    assert len(show.short_name(uri)) <= show.NAME_WIDTH


def write_output(folder, *, damage_fc7: bool = False, files: int = 1) -> None:
    """ROWS predictions of members of one tar shard in `files` shards, with fc7, and two errors rows.

    Row i's top-1 is class i at 0.9 and its top-2 class i + 1 at 0.1. With damage_fc7 every
    byte of the first shard's fc7 column chunk is overwritten, so whoever reads that column fails.
    """
    probs = np.zeros((ROWS, 1000), np.float32)
    probs[np.arange(ROWS), np.arange(ROWS)] = 0.9
    probs[np.arange(ROWS), np.arange(ROWS) + 1] = 0.1
    fc7 = np.random.default_rng(0).random((ROWS, 4096), dtype=np.float32)
    keys = [(f"{i:032x}", f"{SHARD}#00012/{i:09d}", 64, 48) for i in range(ROWS)]
    table = pa.Table.from_pylist(
        prediction_rows(keys, probs, fc7, 5),
        schema=predictions_schema(embeddings=True, provenance=PROVENANCE),
    )
    per_file = ROWS // files
    (folder / "predictions").mkdir()
    (folder / "errors").mkdir()
    for n in range(files):
        name = f"part-{n:05d}-of-{files:05d}.parquet"
        pq.write_table(table.slice(n * per_file, per_file), folder / "predictions" / name)
    path = folder / "predictions" / f"part-00000-of-{files:05d}.parquet"
    errors = [
        error_row("e1", f"{SHARD}#00012/000000099", "decode", "truncated", "cut short"),
        error_row("e2", "/data/shards/part-00002.tar", "read", "damaged_shard", "bad header"),
    ]
    pq.write_table(
        pa.Table.from_pylist(errors, schema=errors_schema(provenance=PROVENANCE)),
        folder / "errors" / "part-00000-of-00001.parquet",
    )
    commit_output(folder)
    if damage_fc7:
        group = pq.ParquetFile(path).metadata.row_group(0)
        (chunk,) = [
            column
            for column in (group.column(i) for i in range(group.num_columns))
            if column.path_in_schema.startswith("fc7")
        ]
        start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o is not None)
        with open(path, "r+b") as handle:
            handle.seek(start)
            handle.write(b"\xff" * chunk.total_compressed_size)


EXPECTED = [
    f"({UNTRAINED_WARNING})",
    f"{ROWS} labelled:",
    "  image                               size  top-1 (score)              top-2 (score)",
    "  ...00001.tar#00012/000000000       64x48  tench (0.900)              goldfish (0.100)",
    "  ...00001.tar#00012/000000001       64x48  goldfish (0.900)           great_white_shark (0.100)",
    "2 failed:",
    "  ...00001.tar#00012/000000099 decode/truncated",
    "  part-00002.tar               read/damaged_shard",
]


def test_show_prints_members_and_never_reads_fc7(tmp_path, capsys):
    write_output(tmp_path, damage_fc7=True)
    with pytest.raises(OSError):  # the damage is real: reading fc7, as show once did, fails
        pq.ParquetFile(tmp_path / "predictions" / "part-00000-of-00001.parquet").read(columns=["fc7"])
    assert show.main([str(tmp_path), "--rows", "2"]) == 0
    assert [line.rstrip() for line in capsys.readouterr().out.splitlines()] == EXPECTED


def test_show_reads_on_into_the_next_shard_and_stops_at_rows(tmp_path, capsys):
    write_output(tmp_path, files=2)  # rows 0-19, then 20-39
    assert show.main([str(tmp_path), "--rows", "25"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"{ROWS} labelled:"  # counted from both shards' footers
    shown = [line.split()[0] for line in lines if " 64x48 " in line]
    assert shown == [f"...00001.tar#00012/{i:09d}" for i in range(25)]


def test_show_without_an_output_is_one_error_line(tmp_path, capsys):
    assert show.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path} holds no predictions table; pass the --output folder of a pipeline.run."
    ]
