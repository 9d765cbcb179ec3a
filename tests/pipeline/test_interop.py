"""An output's Delta tables opened in users' tools (DuckDB, polars, pandas, datasets, LanceDB, autofaiss)."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess

import duckdb
import lancedb
import numpy as np
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from duckdb_extensions import import_extension
from embedding_reader import EmbeddingReader

from pipeline.contract import ERRORS, PREDICTIONS
from pipeline.table import snapshot, table_uri
from pipeline.tools.export import export_laion
from pipeline.tools.search import EmbeddingIndex

K = 7  # every image of labelled_run: the whole ranking is compared, not only its head
# One query vector against all rows, in the SQL a user would write (docs/search.md).
NEIGHBOURS_SQL = """
WITH query AS (SELECT fc7::FLOAT[4096] AS v FROM delta_scan($predictions) WHERE image_id = $image_id)
SELECT p.image_id, array_cosine_similarity(p.fc7::FLOAT[4096], query.v) AS score
FROM delta_scan($predictions) AS p, query
ORDER BY score DESC
LIMIT $k
"""


@pytest.fixture(scope="module")
def duck(tmp_path_factory):
    """A DuckDB connection with the delta extension loaded (delta_scan).

    Users with network run `INSTALL delta; LOAD delta`, which downloads it from
    extensions.duckdb.org; this machine cannot reach that, so the test installs the same
    extension from its PyPI wheel (duckdb-extension-delta), into a folder of its own rather
    than ~/.duckdb.
    """
    con = duckdb.connect()
    con.execute("SET extension_directory = ?", [str(tmp_path_factory.mktemp("duckdb-extensions"))])
    con.execute("SET autoinstall_known_extensions = false")
    import_extension("delta", con=con)
    con.execute("LOAD delta")
    yield con
    con.close()


@pytest.fixture(scope="module")
def predictions(labelled_run) -> str:
    """labelled_run's predictions table: the folder a user hands to delta_scan or scan_delta."""
    return table_uri(str(labelled_run), PREDICTIONS)


@pytest.fixture(scope="module")
def rows(labelled_run, read_rows) -> list[dict]:
    """labelled_run's committed predictions rows without fc7, in image_id order."""
    found, _ = read_rows(labelled_run, PREDICTIONS)
    assert len(found) == K
    return sorted(({k: v for k, v in row.items() if k != "fc7"} for row in found), key=by_id)


@pytest.fixture(scope="module")
def exact(built_index) -> EmbeddingIndex:
    """labelled_run's exact (Flat) index: pipeline.tools.search's answers are the reference."""
    index = EmbeddingIndex(str(built_index))
    assert index.info["kind"] == "exact"
    return index


@pytest.fixture(scope="module")
def rankings(exact, labelled_fc7) -> dict[str, list]:
    """image_id -> pipeline.tools.search's exact hits for that image's fc7, all K of them."""
    ids, _, fc7 = labelled_fc7
    found = dict(zip(ids, exact.search(fc7, K)))
    # Order is only comparable across libraries when no two scores are within float32
    # rounding of each other: every neighbour is more than 1e-5 ahead of the next one.
    gaps = [a.score - b.score for hits in found.values() for a, b in zip(hits, hits[1:])]
    assert min(gaps) > 1e-5, f"near-tied neighbours in the fixture: smallest gap {min(gaps)}"
    return found


def by_id(row: dict) -> str:
    return row["image_id"]


def fc7_by_id(labelled_fc7) -> dict[str, np.ndarray]:
    ids, _, fc7 = labelled_fc7
    return dict(zip(ids, fc7))


def test_duckdb_counts_top_labels_as_the_rows_say(duck, predictions, rows):
    counts = collections.Counter(row["labels"][0]["label"] for row in rows)
    found = duck.execute(
        "SELECT labels[1].label AS label, count(*) AS n FROM delta_scan($p) GROUP BY label "
        "ORDER BY n DESC, label",
        {"p": predictions},
    ).fetchall()
    # DuckDB lists are 1-based: labels[1] is the best label, labels[0] in Python.
    assert found == sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    assert sum(n for _, n in found) == len(rows) == K


def test_duckdb_joins_predictions_and_errors_into_one_row_per_input(
    duck, labelled_run, predictions, read_rows
):
    found = duck.execute(
        "SELECT coalesce(p.uri, e.uri) AS uri, p.labels[1].label AS label, e.error_type "
        "FROM delta_scan($p) AS p FULL OUTER JOIN delta_scan($e) AS e USING (image_id) ORDER BY uri",
        {"p": predictions, "e": table_uri(str(labelled_run), ERRORS)},
    ).fetchall()
    # An input is labelled or failed, never both: the full join on image_id has one row per
    # input file, with exactly one of label and error_type set.
    inputs = sorted(str(path) for path in (labelled_run.parent / "inputs").iterdir())
    assert [uri for uri, _, _ in found] == inputs
    assert all((label is None) != (error is None) for _, label, error in found)
    errors, _ = read_rows(labelled_run, ERRORS)
    assert len(errors) == 1  # the text file with the HTML name
    assert {uri: error for uri, label, error in found if error} == {
        row["uri"]: row["error_type"] for row in errors
    }


def test_duckdb_cosine_neighbours_equal_pipeline_search(duck, predictions, rankings):
    for image_id, hits in rankings.items():
        found = duck.execute(NEIGHBOURS_SQL, {"predictions": predictions, "image_id": image_id, "k": K})
        found = found.fetchall()
        # The same cosine over the same float32 vectors: the exact index's order, image for
        # image (no near ties, see rankings), and the scores to float32 rounding.
        assert [i for i, _ in found] == [h.image_id for h in hits]
        np.testing.assert_allclose([s for _, s in found], [h.score for h in hits], atol=1e-5)
        assert found[0][0] == image_id


def test_readers_of_the_table_see_only_committed_files(duck, labelled_run, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(labelled_run, output)
    folder = output / PREDICTIONS
    # A data file no commit added, as a killed run leaves one: a copy of a committed file.
    shutil.copy(min(folder.glob("*.parquet")), folder / "part-r99999-killed-00000-of-00001.parquet")
    uri = str(folder)
    # Each reader lists the table's files from _delta_log/, so the stray file is not read...
    assert duck.execute("SELECT count(*) FROM delta_scan($p)", {"p": uri}).fetchone() == (K,)
    assert pl.scan_delta(uri).select(pl.len()).collect().item() == K
    assert len(DeltaTable(uri).to_pandas(columns=["image_id"])) == K
    # ...which a glob of the folder would: its rows a second time.
    globbed = duck.execute("SELECT count(*) FROM read_parquet($g)", {"g": f"{uri}/*.parquet"}).fetchone()
    assert globbed[0] > K


def test_polars_scan_delta_and_read_delta_give_the_rows_and_fc7(predictions, rows, labelled_fc7):
    # fc7 is a Delta array<float> (Delta has no fixed-size list): polars reads a List, which
    # casts to the Array(Float32, 4096) that to_numpy turns into a (rows, 4096) matrix.
    # use_pyarrow: polars' own Delta reader refuses fc7 (see the next test).
    frame = pl.scan_delta(predictions, use_pyarrow=True).sort("image_id").collect()
    assert frame.equals(pl.read_delta(predictions, use_pyarrow=True).sort("image_id"))
    assert frame.schema["fc7"] == pl.List(pl.Float32)
    fc7 = frame["fc7"].cast(pl.Array(pl.Float32, 4096)).to_numpy()
    vectors = fc7_by_id(labelled_fc7)
    np.testing.assert_array_equal(fc7, np.stack([vectors[i] for i in frame["image_id"]]))
    assert frame.drop("fc7").to_dicts() == rows
    # Without fc7, polars' own reader works: the columns a label query needs.
    labels = pl.scan_delta(predictions).select("image_id", "uri", "labels").sort("image_id").collect()
    assert labels.equals(frame.select("image_id", "uri", "labels"))


@pytest.mark.xfail(
    strict=True,
    raises=pl.exceptions.SchemaError,
    reason="polars' Delta reader compares the files' Array(Float32, 4096) with the table's "
    "List(Float32) and refuses (pola-rs/polars#27866, open): docs/search.md says use_pyarrow=True",
)
def test_polars_own_delta_reader_reads_fc7(predictions):
    # Strict: once a polars release reads it, this test fails, and docs/search.md can drop
    # use_pyarrow=True.
    frame = pl.scan_delta(predictions).select("fc7").collect()
    assert frame.height == K


def test_pandas_through_deltalake_gives_the_rows_and_fc7(predictions, rows, labelled_fc7):
    frame = DeltaTable(predictions).to_pandas().sort_values("image_id", ignore_index=True)
    assert frame["fc7"].iloc[0].dtype == np.float32
    vectors = fc7_by_id(labelled_fc7)
    np.testing.assert_array_equal(
        np.stack(frame["fc7"].to_numpy()), np.stack([vectors[i] for i in frame["image_id"]])
    )
    assert frame["image_id"].tolist() == [row["image_id"] for row in rows]
    assert frame["uri"].tolist() == [row["uri"] for row in rows]
    assert [[label["label"] for label in labels] for labels in frame["labels"]] == [
        [label["label"] for label in row["labels"]] for row in rows
    ]


def test_hugging_face_datasets_loads_the_committed_files(predictions, rows, labelled_fc7, tmp_path):
    # Imported here, not at the top: datasets cannot be installed beside Beam 2.62, so
    # .venv-flink (which runs only the flink and beam_version tests) goes without it, but
    # .venv has it (the interop-hf extra, run_tests.sh) and this test fails where it is missing.
    try:
        import datasets
    except ImportError:
        pytest.fail("datasets is not installed: pip install -e '.[test,interop-hf]' (what run_tests.sh does)")
    # datasets has no Delta reader: it gets the files the table lists (docs/search.md), here in
    # name order, the order of labelled_fc7.
    files = sorted(DeltaTable(predictions).file_uris())
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path))
    # The fixed-size list keeps its length: a (rows, 4096) float32 matrix, in file order.
    assert loaded.features["fc7"].length == 4096
    ids, _, fc7 = labelled_fc7
    assert loaded["image_id"] == ids
    np.testing.assert_array_equal(loaded.with_format("numpy")[:]["fc7"], fc7)
    assert sorted(loaded.remove_columns("fc7").to_list(), key=by_id) == rows


def test_lancedb_vector_search_equals_pipeline_search(predictions, rankings, tmp_path):
    # The committed files, as the table lists them, streamed into LanceDB batch by batch as a
    # large output would be: the Parquet files keep fc7's fixed-size list, LanceDB's vector type.
    files = DeltaTable(predictions).file_uris()
    source = ds.dataset(files, format="parquet").scanner(batch_size=3).to_reader()
    table = lancedb.connect(tmp_path / "lance").create_table("predictions", data=source)
    assert table.count_rows() == K
    vectors = dict(zip(*table.to_arrow().select(["image_id", "fc7"]).to_pydict().values()))
    for image_id, hits in rankings.items():
        query = np.asarray(vectors[image_id], np.float32)
        found = (
            table.search(query, vector_column_name="fc7")
            .distance_type("cosine")
            .limit(K)
            .select(["image_id", "_distance"])
            .to_arrow()
        )
        # No ANN index was built, so LanceDB scans every row: an exact search, whose order is
        # the exact index's; its cosine distance is 1 - cosine similarity.
        assert found["image_id"].to_pylist() == [h.image_id for h in hits]
        np.testing.assert_allclose(
            1 - np.array(found["_distance"].to_pylist()), [h.score for h in hits], atol=1e-5
        )


def test_embedding_reader_reads_the_export_as_autofaiss_does(labelled_run, labelled_fc7, tmp_path):
    # autofaiss and clip-retrieval read `pipeline.export --to laion`'s folder with
    # embedding-reader: the npy files in name order with the metadata files beside.
    dest = tmp_path / "laion"
    export_laion(str(labelled_run), str(dest), dtype="float32", rows_per_file=3)
    reader = EmbeddingReader(
        str(dest / "img_emb"),
        file_format="parquet_npy",
        metadata_folder=str(dest / "metadata"),
        meta_columns=["image_id"],
    )
    assert (reader.count, reader.dimension) == (K, 4096)
    parts = list(reader(batch_size=3, show_progress=False))
    ids, _, fc7 = labelled_fc7
    # Rows in the committed files' order, the order pipeline.tools.index gives faiss ids in;
    # float32 keeps them exact.
    np.testing.assert_array_equal(np.concatenate([vectors for vectors, _ in parts]), fc7)
    assert [i for _, meta in parts for i in meta["image_id"]] == ids


# Run by .venv-autofaiss's python (autofaiss needs numpy < 2; the job, numpy 2): what a user of
# autofaiss writes, on this project's files. argv: the export, a folder of the predictions
# table's committed files, a work folder; it writes result.json and parquet_vectors.npy there.
AUTOFAISS_SCRIPT = """
import json, logging, os, sys
import faiss, numpy as np
from autofaiss import build_index

export, committed, work = sys.argv[1:4]
exact = dict(index_key="Flat", metric_type="ip", nb_cores=1, verbose=logging.WARNING)

def build(name, embeddings, **options):
    path = os.path.join(work, name + ".index")
    index, _ = build_index(embeddings, index_path=path, index_infos_path=path + ".json", **exact, **options)
    if index is None:
        sys.exit("autofaiss built no " + name + " index; its log above says why")
    return faiss.read_index(path)

# The export, L2-normalised file by file under the same names (so in the same order): with
# "ip", autofaiss' neighbours are cosine ones only for unit vectors, and it normalises nothing.
unit = os.path.join(work, "img_emb")
os.makedirs(unit)
for name in sorted(os.listdir(os.path.join(export, "img_emb"))):
    vectors = np.load(os.path.join(export, "img_emb", name)).astype("float32")
    faiss.normalize_L2(vectors)
    np.save(os.path.join(unit, name), vectors)
index = build("npy", unit)
queries = np.concatenate([np.load(os.path.join(unit, name)) for name in sorted(os.listdir(unit))])
_, neighbours = index.search(queries, index.ntotal)

# The table's Parquet files, read by autofaiss itself: fc7 is a fixed-size list column.
parquet = build(
    "parquet", committed, file_format="parquet", embedding_column_name="fc7", id_columns=["image_id"],
    ids_path=os.path.join(work, "ids"),
)
np.save(os.path.join(work, "parquet_vectors.npy"), parquet.reconstruct_n(0, parquet.ntotal))
kinds = [type(faiss.downcast_index(found)).__name__ for found in (index, parquet)]
result = {"kinds": kinds, "neighbours": neighbours.tolist()}
with open(os.path.join(work, "result.json"), "w") as out:
    json.dump(result, out)
"""


@pytest.mark.slow
def test_autofaiss_indexes_the_export_and_the_table_with_pipeline_search_neighbours(
    labelled_run, labelled_fc7, rankings, tmp_path
):
    python = os.environ.get("AUTOFAISS_PYTHON")
    if not python:
        pytest.fail(
            "AUTOFAISS_PYTHON is not set: ./run_tests.sh (without --fast) makes .venv-autofaiss "
            "(scripts/requirements-autofaiss.txt) and sets it"
        )
    export = tmp_path / "laion"
    # Three files of up to 3 rows: autofaiss' ids run across the files in name order.
    export_laion(str(labelled_run), str(export), dtype="float32", rows_per_file=3)
    # autofaiss reads every *.parquet under a folder, and the table's folder may hold files no
    # commit added: a folder of links to the committed ones, named in snapshot order.
    committed = tmp_path / "committed"
    committed.mkdir()
    for number, path in enumerate(snapshot(str(labelled_run)).files(PREDICTIONS)):
        (committed / f"{number:05d}.parquet").symlink_to(path)
    work = tmp_path / "autofaiss"
    work.mkdir()
    done = subprocess.run(
        [python, "-c", AUTOFAISS_SCRIPT, str(export), str(committed), str(work)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((work / "result.json").read_text())
    assert result["kinds"] == ["IndexFlatIP", "IndexFlatIP"]  # index_key="Flat": exact
    # autofaiss' id i is row i of the metadata files in name order.
    meta = sorted((export / "metadata").glob("*.parquet"))
    ids = [i for path in meta for i in pq.read_table(path, columns=["image_id"]).column(0).to_pylist()]
    assert len(result["neighbours"]) == len(ids) == K
    for row, neighbours in enumerate(result["neighbours"]):
        # Inner product of unit vectors is the cosine pipeline.search ranks by, over the same
        # float32 fc7: the whole ranking is the exact index's (no near ties, see rankings).
        assert [ids[i] for i in neighbours] == [h.image_id for h in rankings[ids[row]]]
    # The Parquet route: autofaiss' id -> image_id table (ids_path) and its Flat index's
    # vectors are the committed rows in order, fc7 exactly as the table holds it.
    mapping = pq.read_table(work / "ids").sort_by("i")
    table_ids, _, fc7 = labelled_fc7
    assert mapping.column("i").to_pylist() == list(range(K))
    assert mapping.column("image_id").to_pylist() == table_ids
    np.testing.assert_array_equal(np.load(work / "parquet_vectors.npy"), fc7)
