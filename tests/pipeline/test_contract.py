"""pipeline.contract: the schemas, rows, provenance, shard names and the writer every reader relies on."""

from __future__ import annotations

import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from pipeline import contract
from pipeline.contract import (
    ERROR_TYPES,
    STAGES,
    Shards,
    decode_provenance,
    disagreements,
    encode_provenance,
    error_row,
    prediction_rows,
    shard_glob,
    shard_prefix,
)
from pipeline.job.write import OutputError, WriteOutputs, check_output_writable, remove_empty_temp_dirs
from pipeline.storage import find_shards, read_provenance

PROVENANCE = {"weights_sha256": "ab" * 32, "resize": "squash", "precision": "float32", "top_k": "3"}


def test_provenance_round_trips_through_the_footer_prefix():
    encoded = encode_provenance(PROVENANCE)
    assert encoded[b"vgg16.resize"] == b"squash"  # every key under the one prefix
    # Other writers' keys (pandas, Spark) in the same footer are not provenance.
    assert decode_provenance({**encoded, b"pandas": b"{}"}) == PROVENANCE
    assert decode_provenance(None) == {}


def test_disagreements_name_the_key_and_both_values():
    new = PROVENANCE | {"precision": "bfloat16", "top_k": "5"}
    assert disagreements(PROVENANCE, new, contract.EMBEDDING_KEYS) == ["precision 'float32' -> 'bfloat16'"]
    assert disagreements(PROVENANCE, new, contract.TABLE_KEYS) == [
        "precision 'float32' -> 'bfloat16'",
        "top_k '3' -> '5'",
    ]
    assert disagreements({}, PROVENANCE, ("resize",)) == ["resize None -> 'squash'"]


def test_shard_names_and_the_glob_that_finds_every_attempt(tmp_path):
    out = str(tmp_path)
    assert shard_prefix(out, "predictions") == f"{out}/predictions"
    assert shard_prefix(out, "errors", attempt=12) == f"{out}/errors-r012"
    names = [
        "predictions-00000-of-00002.parquet",
        "predictions-00001-of-00002.parquet",
        "predictions-r003-00000-of-00001.parquet",
        "errors-r003-00000-of-00001.parquet",
        "predictions-notes.txt",  # not a shard
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    found = find_shards(out)
    assert [os.path.basename(p) for p in found.predictions] == names[:3]
    assert [os.path.basename(p) for p in found.errors] == [names[3]]
    assert found.next_attempt == 4
    assert shard_glob(out, "errors") == f"{out}/errors-*-of-*.parquet"
    assert Shards().next_attempt == 0


def test_labels_are_top_k_in_descending_order():
    probs = np.zeros((1, 1000), np.float32)
    probs[0, [356, 7, 3]] = [0.5, 0.2, 0.2]
    (row,) = prediction_rows([("id", "u", 10, 20)], probs, None, 3)
    # Ties (7 and 3 at 0.2) go to the lower class index.
    assert [(x["class_index"], x["wnid"], x["label"]) for x in row["labels"]] == [
        (356, "n02441942", "weasel"),
        (3, "n01491361", "tiger_shark"),
        (7, "n01514668", "cock"),
    ]
    assert [x["score"] for x in row["labels"]] == [0.5, pytest.approx(0.2), pytest.approx(0.2)]


def test_error_vocabulary_is_complete_and_messages_are_bounded():
    assert tuple(ERROR_TYPES) == STAGES == ("read", "decode", "inference")
    # Every error_type a row can carry is documented; "too_large" is both a file over
    # --max_input_bytes (read) and an image over the pixel limit (decode).
    assert all(meaning for stage in ERROR_TYPES.values() for meaning in stage.values())
    assert "too_large" in ERROR_TYPES["read"] and "too_large" in ERROR_TYPES["decode"]
    assert len(error_row("i", "u", "read", "read_error", "x" * 5000)["message"]) == 2000


@pytest.mark.parametrize("embeddings", [True, False])
def test_write_outputs_writes_both_tables_with_provenance(tmp_path, embeddings):
    probs = np.eye(1000, dtype=np.float32)[[5, 9]]
    fc7 = np.arange(2 * 4096, dtype=np.float32).reshape(2, 4096)
    rows = prediction_rows([("id1", "u1", 4, 3), ("id2", "u2", 8, 6)], probs, fc7 if embeddings else None, 3)
    failed = [error_row("id3", "u3", "decode", "truncated", "truncated: ends early")]
    with TestPipeline() as p:
        tables = {
            "predictions": p | "Rows" >> beam.Create(rows),
            "errors": p | "Errors" >> beam.Create(failed),
        }
        tables | WriteOutputs(str(tmp_path), provenance=PROVENANCE, embeddings=embeddings, attempt=2)
    found = find_shards(str(tmp_path))
    assert [os.path.basename(p) for p in found.paths] == [
        "predictions-r002-00000-of-00001.parquet",
        "errors-r002-00000-of-00001.parquet",
    ]
    predictions = pq.read_table(found.predictions[0])
    assert predictions.column_names == ["image_id", "uri", "width", "height", "labels"] + (
        ["fc7"] if embeddings else []
    )
    assert sorted(predictions.column("image_id").to_pylist()) == ["id1", "id2"]
    if embeddings:
        by_id = dict(zip(predictions.column("image_id").to_pylist(), predictions.column("fc7").to_pylist()))
        np.testing.assert_array_equal(by_id["id2"], fc7[1])  # float32 survives exactly
    assert pq.read_table(found.errors[0]).to_pylist() == failed
    for path in found.paths:
        assert read_provenance(path) == PROVENANCE
        assert pq.read_metadata(path).row_group(0).column(0).compression == "ZSTD"


def test_output_checks_and_cleanup(tmp_path):
    check_output_writable(str(tmp_path / "new" / "dir"))  # made if missing
    assert os.listdir(tmp_path / "new" / "dir") == []  # and the probe file is gone
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is not writable"):
        check_output_writable(str(blocker / "out"))
    (tmp_path / "beam-temp-predictions-1").mkdir()
    (tmp_path / "beam-temp-errors-2").mkdir()
    (tmp_path / "beam-temp-errors-3").mkdir()
    (tmp_path / "beam-temp-errors-3" / "in-flight").write_text("another job is writing")
    remove_empty_temp_dirs(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("beam-temp")) == [
        "beam-temp-errors-3"
    ]
