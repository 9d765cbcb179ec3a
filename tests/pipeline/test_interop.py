"""An output opened in users' tools (DuckDB, polars, pandas, LanceDB, embedding-reader) gives our rows."""

from __future__ import annotations

import collections

import duckdb
import lancedb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest
from embedding_reader import EmbeddingReader

from pipeline.contract import ERRORS, PREDICTIONS, shard_glob
from pipeline.storage import match
from pipeline.tools.search import EmbeddingIndex

K = 7  # every image of labelled_run: the whole ranking is compared, not only its head
# One query vector against all rows, in the SQL a user would write (docs/search.md).
NEIGHBOURS_SQL = """
WITH query AS (SELECT fc7::FLOAT[4096] AS v FROM read_parquet($predictions) WHERE image_id = $image_id)
SELECT p.image_id, array_cosine_similarity(p.fc7::FLOAT[4096], query.v) AS score
FROM read_parquet($predictions) AS p, query
ORDER BY score DESC
LIMIT $k
"""


@pytest.fixture(scope="module")
def predictions(labelled_run) -> str:
    """The glob of labelled_run's predictions shards, as contract.shard_glob spells it."""
    return shard_glob(str(labelled_run), PREDICTIONS)


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


def test_duckdb_counts_top_labels_as_the_rows_say(labelled_run, predictions, read_rows):
    rows, _ = read_rows(labelled_run, PREDICTIONS)
    counts = collections.Counter(row["labels"][0]["label"] for row in rows)
    found = duckdb.execute(
        "SELECT labels[1].label AS label, count(*) AS n FROM read_parquet($p) GROUP BY label "
        "ORDER BY n DESC, label",
        {"p": predictions},
    ).fetchall()
    # DuckDB lists are 1-based: labels[1] is the best label, labels[0] in Python.
    assert found == sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    assert sum(n for _, n in found) == len(rows) == 7


def test_duckdb_joins_predictions_and_errors_into_one_row_per_input(labelled_run, predictions, read_rows):
    found = duckdb.execute(
        "SELECT coalesce(p.uri, e.uri) AS uri, p.labels[1].label AS label, e.error_type "
        "FROM read_parquet($p) AS p FULL OUTER JOIN read_parquet($e) AS e USING (image_id) ORDER BY uri",
        {"p": predictions, "e": shard_glob(str(labelled_run), ERRORS)},
    ).fetchall()
    # An input is labelled or failed, never both: the full join on image_id has one row per
    # input file, with exactly one of label and error_type set.
    inputs = sorted(str(path) for path in (labelled_run.parent / "inputs").iterdir())
    assert [uri for uri, _, _ in found] == inputs
    assert all((label is None) != (error is None) for _, label, error in found)
    errors, _ = read_rows(labelled_run, ERRORS)
    assert {uri: error for uri, label, error in found if error} == {
        row["uri"]: row["error_type"] for row in errors
    }


def test_duckdb_cosine_neighbours_equal_pipeline_search(predictions, rankings):
    for image_id, hits in rankings.items():
        found = duckdb.execute(NEIGHBOURS_SQL, {"predictions": predictions, "image_id": image_id, "k": K})
        found = found.fetchall()
        # The same cosine over the same float32 vectors: the exact index's order, image for
        # image (no near ties, see rankings), and the scores to float32 rounding.
        assert [i for i, _ in found] == [h.image_id for h in hits]
        np.testing.assert_allclose([s for _, s in found], [h.score for h in hits], atol=1e-5)
        assert found[0][0] == image_id


def test_polars_reads_the_same_rows_and_fc7(predictions, labelled_fc7, read_rows, labelled_run):
    ids, uris, fc7 = labelled_fc7
    frame = pl.read_parquet(predictions)
    # fc7 is Arrow's fixed-size list: polars' Array, a (rows, 4096) float32 matrix as is.
    assert frame.schema["fc7"] == pl.Array(pl.Float32, 4096)
    assert frame["image_id"].to_list() == ids and frame["uri"].to_list() == uris
    np.testing.assert_array_equal(frame["fc7"].to_numpy(), fc7)
    rows, _ = read_rows(labelled_run, PREDICTIONS)
    assert frame.drop("fc7").to_dicts() == [{k: v for k, v in row.items() if k != "fc7"} for row in rows]


def test_pandas_reads_the_same_rows_and_fc7(predictions, labelled_fc7):
    ids, uris, fc7 = labelled_fc7
    # A list of the predictions shards: pandas given the folder would mix in the errors table.
    frame = pd.read_parquet(match(predictions))
    assert frame["image_id"].tolist() == ids and frame["uri"].tolist() == uris
    np.testing.assert_array_equal(np.stack(frame["fc7"].to_numpy()), fc7)
    assert frame["fc7"].iloc[0].dtype == np.float32


def test_lancedb_vector_search_equals_pipeline_search(predictions, rankings, tmp_path):
    # Streamed into LanceDB batch by batch, as a large output would be.
    source = ds.dataset(match(predictions), format="parquet").scanner(batch_size=3).to_reader()
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


def test_embedding_reader_reads_fc7_as_autofaiss_does(predictions, labelled_fc7, tmp_path):
    # autofaiss reads its parquet input with embedding-reader, which takes every *.parquet
    # under a folder: the predictions shards go in one of their own (errors have no fc7).
    folder = tmp_path / "predictions"
    folder.mkdir()
    for path in match(predictions):
        (folder / path.rsplit("/", 1)[1]).symlink_to(path)
    reader = EmbeddingReader(
        str(folder), file_format="parquet", embedding_column="fc7", meta_columns=["image_id"]
    )
    assert (reader.count, reader.dimension) == (K, 4096)
    parts = list(reader(batch_size=3, show_progress=False))
    ids, _, fc7 = labelled_fc7
    # Files in name order, rows in file order: the table order pipeline.tools.index gives faiss ids in.
    np.testing.assert_array_equal(np.concatenate([vectors for vectors, _ in parts]), fc7)
    assert [i for _, meta in parts for i in meta["image_id"]] == ids
