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
    decode_provenance,
    disagreements,
    encode_provenance,
    error_row,
    legacy_glob,
    prediction_rows,
)
from pipeline.job.resume import Plan
from pipeline.job.write import (
    CommitRun,
    OutputError,
    WriteOutputs,
    check_output_writable,
    remove_empty_temp_dirs,
    schemas,
)
from pipeline.storage import match, read_provenance
from pipeline.table import snapshot

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


def test_a_0_1_outputs_shards_are_found_by_the_legacy_glob(tmp_path):
    out = str(tmp_path)
    names = [
        "predictions-00000-of-00002.parquet",
        "predictions-r003-00000-of-00001.parquet",
        "errors-r003-00000-of-00001.parquet",
        "predictions-notes.txt",  # not a shard
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [os.path.basename(p) for p in match(legacy_glob(out, "predictions"))] == names[:2]
    assert [os.path.basename(p) for p in match(legacy_glob(out, "errors"))] == [names[2]]


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
        written = tables | WriteOutputs(
            str(tmp_path), provenance=PROVENANCE, embeddings=embeddings, run=2, token="t0"
        )
        plan = Plan(str(tmp_path), run=2, token="t0")
        written | CommitRun(plan.commit(schemas(PROVENANCE, embeddings=embeddings), PROVENANCE))
    found = snapshot(str(tmp_path))
    assert found.run == 2
    files = {table: found.files(table) for table in ("predictions", "errors")}
    assert {table: [os.path.relpath(p, tmp_path) for p in paths] for table, paths in files.items()} == {
        "predictions": ["predictions/part-r00002-t0-00000-of-00001.parquet"],
        "errors": ["errors/part-r00002-t0-00000-of-00001.parquet"],
    }
    predictions = pq.read_table(files["predictions"][0])
    assert predictions.column_names == ["image_id", "uri", "width", "height", "labels"] + (
        ["fc7"] if embeddings else []
    )
    assert sorted(predictions.column("image_id").to_pylist()) == ["id1", "id2"]
    if embeddings:
        by_id = dict(zip(predictions.column("image_id").to_pylist(), predictions.column("fc7").to_pylist()))
        np.testing.assert_array_equal(by_id["id2"], fc7[1])  # float32 survives exactly
    assert pq.read_table(files["errors"][0]).to_pylist() == failed
    for path in files["predictions"] + files["errors"]:
        assert read_provenance(path) == PROVENANCE
        assert pq.read_metadata(path).row_group(0).column(0).compression == "ZSTD"
    # fc7's floats are written plain (a dictionary of them never pays); every other column keeps
    # Parquet's dictionary encoding.
    group = pq.read_metadata(files["predictions"][0]).row_group(0)
    dictionary = {
        group.column(i).path_in_schema: "RLE_DICTIONARY" in group.column(i).encodings
        for i in range(group.num_columns)
    }
    if embeddings:
        assert dictionary.pop("fc7.list.item") is False
    assert all(dictionary.values()), dictionary


def test_output_checks_and_cleanup(tmp_path):
    check_output_writable(str(tmp_path / "new" / "dir"))  # made if missing
    assert os.listdir(tmp_path / "new" / "dir") == []  # and the probe file is gone
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is not writable"):
        check_output_writable(str(blocker / "out"))
    (tmp_path / "beam-temp-part-r00001-a-1").mkdir()
    (tmp_path / "beam-temp-part-r00001-a-2").mkdir()
    (tmp_path / "beam-temp-part-r00002-b-3").mkdir()
    (tmp_path / "beam-temp-part-r00002-b-3" / "in-flight").write_text("another job is writing")
    (tmp_path / "beam-temp-elsewhere").mkdir()  # not a temp folder of this job's files
    remove_empty_temp_dirs(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("beam-temp")) == [
        "beam-temp-elsewhere",
        "beam-temp-part-r00002-b-3",
    ]


# ------------------------------------------------------------------- names that are not UTF-8


@pytest.mark.parametrize(
    ("path", "uri"),
    [
        ("/photos/a b.jpg", "/photos/a b.jpg"),  # UTF-8: as it is (earlier runs' image_ids stay)
        ("/photos/café %41.jpg", "/photos/café %41.jpg"),
        (b"/photos/caf\xe9.jpg", "file:///photos/caf%E9.jpg"),  # Latin-1 bytes: a file:// URI
        (b"/p/\xff %41#?.jpg", "file:///p/%FF%20%2541%23%3F.jpg"),  # every byte but "/" and unreserved
        ("/photos/caf\udce9.jpg", "file:///photos/caf%E9.jpg"),  # as os.fsdecode holds that name
    ],
)
def test_a_local_paths_uri_and_back(path, uri):
    assert contract.path_uri(path) == uri
    assert os.fsencode(contract.uri_path(uri)) == os.fsencode(path)  # reversible, to the byte
    assert contract.image_id(uri)  # always valid UTF-8


def test_uri_path_takes_only_local_uris():
    assert contract.uri_path("file://localhost/a%20b") == "/a b"
    with pytest.raises(ValueError, match="absolute path on this host"):
        contract.uri_path("file://server/share/x.jpg")
    with pytest.raises(ValueError, match="not a local path"):
        contract.uri_path("gs://b/x.jpg")


@pytest.mark.parametrize(
    ("key", "spelled"),
    [
        ("00012/000123456", "00012/000123456"),  # UTF-8: as it is
        (b"caf\xc3\xa9", "café"),
        (b"caf\xe9", "%caf%E9"),  # not UTF-8: '%', then percent-encoded
        ("caf\udce9", "%caf%E9"),  # the same name as tarfile hands it over
        ("%41", "%%2541"),  # a key starting with '%' is encoded, so no spelling means two keys
        ("a%41", "a%41"),
    ],
)
def test_a_member_keys_spelling_and_back(key, spelled):
    assert contract.key_uri(key) == spelled
    raw = key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")
    assert contract.key_bytes(spelled) == raw


def test_the_new_read_error_types():
    for name in ("not_a_file", "symlink_loop", "read_timeout"):
        assert ERROR_TYPES["read"][name] == contract.READ_ERROR_TYPES[name]
