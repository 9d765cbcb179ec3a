"""Tests for pipeline.tools.export: clip-retrieval's layout read back row for row, streaming, refusals."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embedding_reader import EmbeddingReader

from pipeline.contract import ERRORS, PREDICTIONS, decode_provenance, errors_schema, predictions_schema
from pipeline.tools import export as export_module
from pipeline.tools.export import ExportError, export_laion
from tests.conftest import REPO
from tests.pipeline.conftest import PROVENANCE, commit_output, write_predictions


def write_output(
    folder: pathlib.Path, shards: list[np.ndarray], *, row_group_size: int | None = None, **metadata
) -> pathlib.Path:
    """An output folder as pipeline.run writes it: predictions files holding these fc7 rows, and errors."""
    (folder / PREDICTIONS).mkdir(parents=True, exist_ok=True)
    (folder / ERRORS).mkdir(parents=True, exist_ok=True)
    first = 0
    for part, vectors in enumerate(shards):
        path = folder / PREDICTIONS / f"part-{part:05d}-of-{len(shards):05d}.parquet"
        write_predictions(path, vectors, first, labels=True, row_group_size=row_group_size, **metadata)
        first += len(vectors)
    pq.write_table(errors_schema(provenance=PROVENANCE).empty_table(), folder / ERRORS / "part-0.parquet")
    commit_output(folder)
    return folder


def read_export(dest: pathlib.Path) -> tuple[list[np.ndarray], list[pa.Table]]:
    """(npy arrays, metadata tables) of an export, each in file name order."""
    embeddings = sorted((dest / "img_emb").iterdir())
    metadata = sorted((dest / "metadata").iterdir())
    return [np.load(path) for path in embeddings], [pq.read_table(path) for path in metadata]


def names(dest: pathlib.Path) -> list[str]:
    return sorted(str(path.relative_to(dest)) for path in dest.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[pathlib.Path, np.ndarray]:
    """23 random fc7 rows in three shards of 8, 8 and 7: an output that makes 12 files of 2 rows."""
    vectors = np.random.default_rng(5).random((23, 4096), dtype=np.float32)
    return write_output(tmp_path_factory.mktemp("many"), [vectors[:8], vectors[8:16], vectors[16:]]), vectors


def test_float32_export_of_a_real_run_holds_its_fc7_row_for_row(
    labelled_run, labelled_fc7, read_rows, tmp_path
):
    ids, uris, fc7 = labelled_fc7
    done = export_laion(str(labelled_run), str(tmp_path / "laion"), dtype="float32", rows_per_file=3)
    # 7 rows in files of 3: 3 + 3 + 1, numbered to the digits of the file count (1).
    assert (done.count, done.files) == (7, 3)
    assert names(tmp_path / "laion") == [
        *(f"img_emb/img_emb_{n}.npy" for n in range(3)),
        *(f"metadata/metadata_{n}.parquet" for n in range(3)),
    ]
    arrays, tables = read_export(tmp_path / "laion")
    assert [len(a) for a in arrays] == [len(t) for t in tables] == [3, 3, 1]
    # float32 is fc7 as the predictions hold it: bit for bit, in the predictions' order, and
    # metadata row i of file N describes npy row i of file N.
    np.testing.assert_array_equal(np.concatenate(arrays), fc7)
    metadata = pa.concat_tables(tables)
    assert metadata.column("image_id").to_pylist() == ids and metadata.column("uri").to_pylist() == uris
    rows, files = read_rows(labelled_run, PREDICTIONS)
    best = [row["labels"][0] for row in rows]
    assert metadata.column("label").to_pylist() == [b["label"] for b in best]
    assert metadata.column("score").to_pylist() == [b["score"] for b in best]
    # The metadata footer says which weights, resize and precision made the vectors.
    assert decode_provenance(tables[0].schema.metadata) == decode_provenance(
        pq.read_schema(files[0]).metadata
    )


def test_float16_by_default_rounds_each_value_once(labelled_run, labelled_fc7, tmp_path):
    export_laion(str(labelled_run), str(tmp_path / "laion"))
    arrays, _ = read_export(tmp_path / "laion")
    assert [a.dtype for a in arrays] == [np.float16]
    np.testing.assert_array_equal(arrays[0], labelled_fc7[2].astype(np.float16))


def test_files_are_zero_padded_and_fill_across_batches_and_shards(many, tmp_path):
    output, vectors = many
    # Batches of 3 rows and files of 2: batches straddle files, and files straddle shards.
    done = export_laion(str(output), str(tmp_path / "laion"), dtype="float32", rows_per_file=2, batch_rows=3)
    assert done.files == 12
    # 12 files: two digits for every number, so name order is row order.
    assert names(tmp_path / "laion")[:3] == [
        "img_emb/img_emb_00.npy",
        "img_emb/img_emb_01.npy",
        "img_emb/img_emb_02.npy",
    ]
    assert names(tmp_path / "laion")[11:13] == ["img_emb/img_emb_11.npy", "metadata/metadata_00.parquet"]
    arrays, tables = read_export(tmp_path / "laion")
    assert [len(a) for a in arrays] == [2] * 11 + [1]
    np.testing.assert_array_equal(np.concatenate(arrays), vectors)
    assert pa.concat_tables(tables).column("image_id").to_pylist() == [f"id{i:05d}" for i in range(23)]
    assert pa.concat_tables(tables).column("label").to_pylist() == [f"label{i % 7}" for i in range(23)]


def test_embedding_reader_reads_the_export_as_autofaiss_and_clip_retrieval_do(many, tmp_path):
    output, vectors = many
    export_laion(str(output), str(tmp_path / "laion"), rows_per_file=5)
    ids = [f"id{i:05d}" for i in range(23)]
    # autofaiss' input (`--embeddings DEST/img_emb`, file_format "npy"): the npy files in name
    # order, faiss id = row number across them, so id i is metadata row i. float32 batches of
    # the float16 rows: each value rounded once, exactly.
    npy = EmbeddingReader(str(tmp_path / "laion" / "img_emb"), file_format="npy")
    assert (npy.count, npy.dimension) == (23, 4096)
    parts = list(npy(batch_size=4, show_progress=False))
    np.testing.assert_array_equal(np.concatenate([v for v, _ in parts]), vectors.astype(np.float16))
    assert [i for _, meta in parts for i in meta["i"]] == list(range(23))
    # "parquet_npy": the metadata files paired with the npy files by name order, row by row.
    both = EmbeddingReader(
        str(tmp_path / "laion" / "img_emb"),
        file_format="parquet_npy",
        metadata_folder=str(tmp_path / "laion" / "metadata"),
        meta_columns=["image_id", "label"],
    )
    parts = list(both(batch_size=4, show_progress=False))
    np.testing.assert_array_equal(np.concatenate([v for v, _ in parts]), vectors.astype(np.float16))
    assert [i for _, meta in parts for i in meta["image_id"]] == ids
    assert [i for _, meta in parts for i in meta["label"]] == [f"label{i % 7}" for i in range(23)]


def test_streams_batches_never_the_whole_matrix(tmp_path):
    vectors = np.random.default_rng(6).random((2048, 4096), dtype=np.float32)  # 32 MiB of fc7
    # Row groups of 256 rows (4 MiB of fc7), as pipeline.run's writer keeps them small.
    output = write_output(tmp_path / "out", [vectors[:1024], vectors[1024:]], row_group_size=256)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        export_laion(
            str(output), str(tmp_path / "laion"), dtype="float32", rows_per_file=1000, batch_rows=128
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Parquet is read a row group's column chunk at a time (4 MiB of bytes here), then in
    # batches of 128 x 4096 x 4 B = 2 MiB, a copy or two of one in flight: 9.2 MiB measured.
    # Holding a file's rows (16 MiB) or the matrix (32 MiB) would pass 14 MiB.
    assert peak < 14 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    arrays, _ = read_export(tmp_path / "laion")
    np.testing.assert_array_equal(np.concatenate(arrays), vectors)


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = export_module.main(["--to", "laion", *args])
    return code, capsys.readouterr().err


def test_refuses_an_output_that_does_not_exist(tmp_path, capsys):
    code, err = run_cli(capsys, str(tmp_path / "nope"), str(tmp_path / "laion"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "does not exist; pass the --output directory of a pipeline.run" in err
    assert not (tmp_path / "laion").exists()


def test_refuses_an_output_without_fc7(tmp_path, capsys):
    schema = predictions_schema(embeddings=False, provenance=PROVENANCE)
    (tmp_path / "out" / PREDICTIONS).mkdir(parents=True)
    pq.write_table(schema.empty_table(), tmp_path / "out" / PREDICTIONS / "part-0.parquet")
    commit_output(tmp_path / "out")
    code, err = run_cli(capsys, str(tmp_path / "out"), str(tmp_path / "laion"))
    assert code == 2 and err.count("\n") == 1
    assert "has no fc7 column; re-run pipeline.run with --embeddings" in err
    assert not (tmp_path / "laion").exists()


def test_refuses_shards_whose_fc7_are_not_comparable(tmp_path):
    ones = np.ones((1, 4096), np.float32)
    output = tmp_path / "out"
    (output / PREDICTIONS).mkdir(parents=True)
    write_predictions(output / PREDICTIONS / "part-0.parquet", ones, 0)
    # As if a resumed run had used other weights (pipeline.job.resume refuses that).
    write_predictions(output / PREDICTIONS / "part-1.parquet", ones, 1, weights_sha256="cd" * 32)
    commit_output(output)
    with pytest.raises(ExportError, match="disagree on weights_sha256"):
        export_laion(str(output), str(tmp_path / "laion"))


def test_refuses_a_non_empty_dest_unless_overwrite(many, tmp_path, capsys):
    output, vectors = many
    dest = tmp_path / "laion"
    assert run_cli(capsys, str(output), str(dest), "--rows_per_file", "2")[0] == 0  # 12 file pairs
    (dest / "README").write_text("the user's own file")
    before = {name: (dest / name).read_bytes() for name in names(dest)}
    code, err = run_cli(capsys, str(output), str(dest), "--rows_per_file", "100")
    assert code == 2 and err.count("\n") == 1 and "is not empty" in err and "--overwrite" in err
    assert {name: (dest / name).read_bytes() for name in names(dest)} == before  # untouched
    assert run_cli(capsys, str(output), str(dest), "--rows_per_file", "100", "--overwrite")[0] == 0
    # The earlier export's 12 pairs are gone, not left to be read with the new one; other files stay.
    assert names(dest) == ["README", "img_emb/img_emb_0.npy", "metadata/metadata_0.parquet"]
    np.testing.assert_array_equal(read_export(dest)[0][0], vectors.astype(np.float16))


def test_refuses_fc7_beyond_float16_and_leaves_no_partial_export(tmp_path, capsys):
    vectors = np.ones((6, 4096), np.float32)
    vectors[4, 7] = 1e6  # float16 tops out at 65504: this would be written as inf
    output = write_output(tmp_path / "out", [vectors[:3], vectors[3:]])
    code, err = run_cli(
        capsys, str(output), str(tmp_path / "laion"), "--rows_per_file", "2", "--batch_rows", "2"
    )
    assert code == 2 and err.count("\n") == 1 and "--dtype float32" in err
    # Files 0 and 1 were written before row 4 was read; they are removed with the folders
    # made for them, so the same command with --dtype float32 runs as is.
    assert not (tmp_path / "laion").exists()
    code, _ = run_cli(capsys, str(output), str(tmp_path / "laion"), "--dtype", "float32")
    assert code == 0
    np.testing.assert_array_equal(read_export(tmp_path / "laion")[0][0], vectors)


def test_the_documented_command_in_a_fresh_process(labelled_run, tmp_path):
    # `python -m pipeline.export`, as docs/search.md writes it (the module that runs pipeline.tools.export).
    command = [
        sys.executable,
        "-m",
        "pipeline.export",
        "--to",
        "laion",
        str(labelled_run),
        str(tmp_path / "laion"),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"exported 7 rows of fc7 (float16) from {labelled_run} to ")
    assert "UNTRAINED" in done.stderr  # conftest's weights are synthesized, and the export says so
    assert names(tmp_path / "laion") == ["img_emb/img_emb_0.npy", "metadata/metadata_0.parquet"]
