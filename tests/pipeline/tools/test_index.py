"""Tests for pipeline.tools.index: reading fc7 Parquet, exact and approximate indexes, PCA, provenance."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks.index_recall import SyntheticFc7, exact_search, recall_at
from pipeline.contract import predictions_schema
from pipeline.table import snapshot
from pipeline.tools import index as index_module
from pipeline.tools.index import ParquetEmbeddings, build_index, choose_index, fit_pca, normalize
from pipeline.tools.search import EmbeddingIndex
from tests.pipeline.conftest import PROVENANCE, commit_output, write_predictions


@pytest.fixture(scope="module")
def synthetic_predictions(tmp_path_factory) -> tuple[str, np.ndarray]:
    """2,100 fc7-like rows in three Parquet files (700 each)."""
    folder = tmp_path_factory.mktemp("synthetic")
    (folder / "predictions").mkdir()
    vectors = SyntheticFc7(2100, seed=3).all()
    for part in range(3):
        write_predictions(
            folder / "predictions" / f"part-{part:05d}-of-00003.parquet",
            vectors[700 * part : 700 * (part + 1)],
            700 * part,
        )
    return commit_output(folder), vectors


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k in float64: the reference the exact index must reproduce."""
    v = vectors / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
    scores = q @ v.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def test_exact_index_of_a_real_run_matches_brute_force_cosine(built_index, labelled_fc7):
    loaded = EmbeddingIndex(str(built_index))
    ids, uris, fc7 = labelled_fc7
    # 6 sample photos + magenta.png were labelled; the hostile text file is an errors row.
    assert len(ids) == 7
    assert loaded.info["kind"] == "exact" and loaded.info["index_key"] == "Flat"
    scores, order = brute_force(fc7, fc7, 7)
    for row, hits in enumerate(loaded.search(fc7, k=7)):
        assert [h.image_id for h in hits] == [ids[i] for i in order[row]]
        assert [h.uri for h in hits] == [uris[i] for i in order[row]]
        np.testing.assert_allclose([h.score for h in hits], scores[row], atol=1e-5)


def test_index_directory_keeps_ids_and_provenance(labelled_run, built_index, labelled_fc7):
    out, path = labelled_run, built_index
    assert sorted(p.name for p in path.iterdir()) == ["ids.parquet", "index.json", "knn.index"]
    ids, uris, _ = labelled_fc7
    table = pq.read_table(path / "ids.parquet")
    assert table.column("row").to_pylist() == list(range(7))  # faiss id == row, in Parquet order
    assert table.column("image_id").to_pylist() == ids
    assert table.column("uri").to_pylist() == uris
    info = json.loads((path / "index.json").read_text())
    meta = pq.read_schema(snapshot(str(out)).files("predictions")[0]).metadata
    for key in (
        "weights_sha256",
        "weights_name",
        "weights_untrained",
        "resize",
        "precision",
        "package_version",
    ):
        assert info["provenance"][key] == meta[f"vgg16.{key}".encode()].decode()
    assert info["provenance"]["weights_untrained"] == "true"  # conftest's synthesized weights
    assert (info["count"], info["input_dim"], info["dim"], info["pca"]) == (7, 4096, 4096, None)


def test_streams_files_in_batches_and_matches_brute_force(synthetic_predictions, tmp_path):
    pattern, vectors = synthetic_predictions
    source = ParquetEmbeddings(pattern, batch_rows=128)
    sizes = [len(batch.vectors) for batch in source.batches()]
    # Each 700-row file (one row group) is read as 5 batches of 128 and one of 60 = 700 - 640:
    # never more than 128 rows of fc7 in memory at once.
    assert sizes == ([128] * 5 + [60]) * 3
    build_index(source, str(tmp_path), provenance=source.provenance)
    loaded = EmbeddingIndex(str(tmp_path))
    queries = vectors[::50]
    scores, order = brute_force(vectors, queries, 10)
    for row, hits in enumerate(loaded.search(queries, k=10)):
        assert [h.image_id for h in hits] == [f"id{i:05d}" for i in order[row]]
        np.testing.assert_allclose([h.score for h in hits], scores[row], atol=1e-5)


def test_refuses_predictions_from_different_weights(tmp_path):
    vectors = np.ones((2, 4096), np.float32)
    (tmp_path / "predictions").mkdir()
    write_predictions(tmp_path / "predictions" / "part-0.parquet", vectors, 0)
    write_predictions(tmp_path / "predictions" / "part-1.parquet", vectors, 2, weights_sha256="cd" * 32)
    with pytest.raises(ValueError, match="disagree on weights_sha256"):
        ParquetEmbeddings(commit_output(tmp_path))


def test_refuses_predictions_without_fc7(tmp_path, capsys):
    schema = predictions_schema(embeddings=False, provenance=PROVENANCE)
    (tmp_path / "predictions").mkdir()
    pq.write_table(schema.empty_table(), tmp_path / "predictions" / "part-0.parquet")
    code = index_module.main(["--predictions", commit_output(tmp_path), "--out", str(tmp_path / "i")])
    assert code == 2
    assert "no fc7 column; re-run pipeline.run with --embeddings" in capsys.readouterr().err


def test_refuses_a_folder_without_a_predictions_table(tmp_path):
    with pytest.raises(ValueError, match="holds no predictions table; pass the --output folder"):
        ParquetEmbeddings(str(tmp_path))


def test_a_0_1_output_is_refused_with_the_command_that_converts_it(tmp_path):
    write_predictions(tmp_path / "predictions-00000-of-00001.parquet", np.ones((1, 4096), np.float32), 0)
    with pytest.raises(ValueError, match=f"convert it with: python -m pipeline.upgrade {tmp_path}"):
        ParquetEmbeddings(str(tmp_path))


def test_the_predictions_table_folder_itself_is_accepted_too(synthetic_predictions):
    output, vectors = synthetic_predictions
    assert ParquetEmbeddings(f"{output}/predictions").count == len(vectors)


def test_choose_index_exact_then_ivf_sq8():
    assert choose_index(100_000) == "Flat"
    # 4 * sqrt(200,000) = 1788.9 -> 2**10 = 1024 lists; 50,000 // 39 = 1282 training rows allow that many.
    assert choose_index(200_000) == "IVF1024,SQ8"
    # 4 * sqrt(20,000,000) = 17889 -> 16384 lists, but 50,000 // 39 = 1282 caps it at 1282.
    assert choose_index(20_000_000) == "IVF1282,SQ8"
    assert choose_index(20_000_000, train_size=1_000_000) == "IVF16384,SQ8"


def test_fit_pca_finds_the_principal_subspace():
    rng = np.random.default_rng(0)
    # 300 rows in 16-d with variances 16, 9, 4, 1 on the first four axes and 0.01 elsewhere.
    scales = np.array([4, 3, 2, 1] + [0.1] * 12, np.float32)
    rows = rng.standard_normal((300, 16)).astype(np.float32) * scales
    components, mean, kept = fit_pca(rows, 3)  # 300 >= 16 rows: the covariance branch
    _, singular, vt = np.linalg.svd(rows - rows.mean(0), full_matrices=False)
    # Same subspace as the SVD, up to the sign of each component.
    np.testing.assert_allclose(np.abs(np.sum(components * vt[:3], axis=1)), 1, atol=1e-4)
    np.testing.assert_allclose(mean, rows.mean(0), atol=1e-6)
    assert kept == pytest.approx((singular[:3] ** 2).sum() / (singular**2).sum(), rel=1e-5)
    few, few_mean, _ = fit_pca(rows[:10], 3)  # 10 < 16 rows: the SVD branch
    # Its components are the top eigenvectors of those 10 rows' scatter matrix (eigh: another
    # algorithm than the SVD the branch uses), again up to sign.
    centred = rows[:10].astype(np.float64) - rows[:10].mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    assert eigenvalues[-3] > 1.1 * eigenvalues[-4]  # a well-separated top 3: the subspace is defined
    top3 = eigenvectors[:, ::-1][:, :3].T
    np.testing.assert_allclose(np.abs(np.sum(few * top3, axis=1)), 1, atol=1e-4)
    np.testing.assert_allclose(few_mean, rows[:10].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="Received: dim=17"):
        fit_pca(rows, 17)


@pytest.mark.slow
def test_pca_index_reduces_and_finds_each_vector_itself(synthetic_predictions, tmp_path):
    pattern, vectors = synthetic_predictions
    out = tmp_path / "pca"
    argv = ["--predictions", pattern, "--out", str(out), "--dim", "32", "--train_size", "500"]
    assert index_module.main(argv) == 0
    loaded = EmbeddingIndex(str(out))
    assert loaded.info["pca"]["dim"] == 32 and loaded.info["pca"]["train_rows"] == 500
    assert loaded.info["dim"] == 32 and loaded.info["input_dim"] == 4096
    assert isinstance(loaded.index, faiss.IndexPreTransform)  # PCA + L2norm travel inside knn.index
    hits = loaded.search(vectors[:20], k=1)
    assert [h[0].image_id for h in hits] == [f"id{i:05d}" for i in range(20)]
    np.testing.assert_allclose([h[0].score for h in hits], 1, atol=1e-5)
    assert loaded.search_id("id00007", k=1)[0].image_id == "id00007"


def test_refuses_a_dim_larger_than_the_vectors(synthetic_predictions, tmp_path, capsys):
    pattern, _ = synthetic_predictions
    assert index_module.main(["--predictions", pattern, "--out", str(tmp_path), "--dim", "5000"]) == 2
    assert "Received: dim=5000" in capsys.readouterr().err


def test_ivf_index_looks_up_ids_across_row_groups(synthetic_predictions, tmp_path, monkeypatch):
    pattern, _ = synthetic_predictions
    monkeypatch.setattr(index_module, "IDS_ROW_GROUP", 500)  # 2,100 ids -> row groups of 500 (and 100)
    source = ParquetEmbeddings(pattern, batch_rows=256)
    info = build_index(
        source, str(tmp_path), provenance=source.provenance, index_key="IVF8,SQ8", search_params="nprobe=8"
    )
    assert pq.ParquetFile(tmp_path / "ids.parquet").num_row_groups == 5
    loaded = EmbeddingIndex(str(tmp_path))
    assert info["kind"] == "approximate"
    for image_id in ("id00000", "id00499", "id00500", "id01234", "id02099"):
        hits = loaded.search_id(image_id, k=3)
        assert hits[0].image_id == image_id and hits[0].uri == f"/photos/{image_id}.jpg"
        assert hits[0].score == pytest.approx(1, abs=0.01)  # SQ8 codes: 8 bits per dimension
    with pytest.raises(ValueError, match="is not in the index"):
        loaded.search_id("nope")


def test_approximate_recall_at_10_on_20000_vectors(tmp_path):
    """The fast version of benchmarks/index_recall.py: 20,000 vectors of 256-d, as after PCA."""
    source = SyntheticFc7(20_000, dim=256, seed=1)
    info = build_index(source, str(tmp_path), provenance={}, exact_max=10_000)
    # 4 * sqrt(20,000) = 565.7 -> 512 lists; 20,000 // 39 = 512 training rows allow 512.
    assert (info["kind"], info["index_key"]) == ("approximate", "IVF512,SQ8")
    # nprobe doubles until 256 probe rows estimate recall@10 >= 0.97 (64 on this data: 12% of the lists).
    assert info["search_params"] == "nprobe=64"
    assert info["tuning"]["estimated_recall@10"] >= 0.97
    queries = normalize(SyntheticFc7(500, dim=256, seed=2).all())
    _, found = EmbeddingIndex(str(tmp_path)).index.search(queries, 10)
    recall = recall_at(found, exact_search(source, queries, 10))
    assert recall >= 0.95, recall
