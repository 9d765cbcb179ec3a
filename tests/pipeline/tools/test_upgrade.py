"""pipeline.upgrade: a 0.1 output (flat Parquet shards) becomes the two Delta tables, rows intact."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import ConfigError
from pipeline.contract import error_row, errors_schema
from pipeline.job.resume import prepare
from pipeline.table import snapshot
from pipeline.tools import upgrade
from tests.pipeline.conftest import PROVENANCE, write_predictions


def flat_output(folder):
    """A 0.1 output after one --resume: two attempts' predictions shards and one errors shard."""
    folder.mkdir()
    vectors = np.arange(3 * 4096, dtype=np.float32).reshape(3, 4096)
    write_predictions(folder / "predictions-00000-of-00001.parquet", vectors[:2], 0)
    write_predictions(folder / "predictions-r001-00000-of-00001.parquet", vectors[2:], 2)
    errors = [error_row("e1", "/photos/bad.jpg", "decode", "truncated", "cut short")]
    schema = errors_schema(provenance=PROVENANCE)
    pq.write_table(pa.Table.from_pylist(errors, schema=schema), folder / "errors-r001-00000-of-00001.parquet")
    return folder


def test_upgrade_commits_every_row_then_removes_the_flat_shards(tmp_path, capsys):
    out = flat_output(tmp_path / "out")
    with pytest.raises(ConfigError, match=f"convert it first with: python -m pipeline.upgrade {out}"):
        prepare(str(out), resume=True, retry_errors=False, provenance=PROVENANCE, embeddings=True)
    assert upgrade.main([str(out)]) == 0
    assert "2 predictions and 1 errors file(s)" in capsys.readouterr().out
    found = snapshot(str(out))
    predictions = pq.read_table(found.files("predictions"))
    assert sorted(predictions.column("image_id").to_pylist()) == ["id00000", "id00001", "id00002"]
    assert pq.read_table(found.files("errors")).column("image_id").to_pylist() == ["e1"]
    np.testing.assert_array_equal(
        np.stack(predictions.sort_by("image_id").column("fc7").to_numpy(zero_copy_only=False))[2],
        np.arange(2 * 4096, 3 * 4096, dtype=np.float32),
    )
    assert sorted(p.name for p in out.iterdir()) == ["errors", "predictions"]  # flat shards gone
    # Now it resumes like any output of this version.
    plan = prepare(str(out), resume=True, retry_errors=False, provenance=PROVENANCE, embeddings=True)
    assert plan.resuming and plan.run == 2


def test_upgrade_refuses_a_folder_without_flat_shards(tmp_path, capsys):
    assert upgrade.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
