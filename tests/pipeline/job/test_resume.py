"""pipeline.job.resume: a re-run replaces the output; --resume labels only what is missing; each once."""

from __future__ import annotations

import os

import pytest

from pipeline import ConfigError
from pipeline.contract import Shards
from pipeline.job.resume import Plan, check_compatible
from pipeline.storage import find_shards, read_provenance
from tests.conftest import SAMPLES
from tests.pipeline.faults import FaultyFileSystem, faulty
from tests.pipeline.jobs import run_here


@pytest.fixture(autouse=True)
def no_faults():
    FaultyFileSystem.reset()
    yield
    FaultyFileSystem.reset()


def photos_dir(tmp_path, names, *, bad=()):
    """A folder of copies of one photo, those named in `bad` replaced by text."""
    folder = tmp_path / "in"
    folder.mkdir(parents=True, exist_ok=True)
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    for name in names:
        (folder / name).write_bytes(b"not a photo" if name in bad else photo)
    return folder


@pytest.mark.slow
def test_rerun_replaces_never_appends(tmp_path, npz_path, capsys, read_rows):
    folder = photos_dir(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "x.jpg"], bad={"x.jpg"})
    out = tmp_path / "out"
    args = ("--output", out, "--weights", npz_path)
    run_here(capsys, "--input", f"{folder}/*", *args)
    first = read_rows(out, "predictions")[0], read_rows(out, "errors")[0]
    run_here(capsys, "--input", f"{folder}/*", *args)
    second = read_rows(out, "predictions")[0], read_rows(out, "errors")[0]
    assert [len(t) for t in second] == [3, 1]  # not 6 and 2
    assert first == second
    # A re-run over fewer inputs leaves only those: the old shards are replaced.
    run_here(capsys, "--input", f"{folder}/a.jpg", *args)
    predictions, files = read_rows(out, "predictions")
    assert [os.path.basename(r["uri"]) for r in predictions] == ["a.jpg"]
    assert read_rows(out, "errors")[0] == []


@pytest.mark.slow
def test_resume_labels_only_what_is_missing(tmp_path, npz_path, capsys, read_rows):
    # The first job "died" after a.jpg, b.jpg and the bad x.jpg; the resumed one is given
    # everything and must only open the rest.
    names = ["a.jpg", "b.jpg", "x.jpg", "c.jpg", "d.jpg", "y.jpg"]
    folder = photos_dir(tmp_path, names, bad={"x.jpg", "y.jpg"})
    out = tmp_path / "out"
    args = ("--output", out, "--weights", npz_path)
    run_here(capsys, "--input", faulty(folder) + "/[abx].jpg", *args)
    FaultyFileSystem.reset()
    line = run_here(capsys, "--input", faulty(folder) + "/*", *args, "--resume")
    assert sorted(os.path.basename(p) for p in FaultyFileSystem.opens) == ["c.jpg", "d.jpg", "y.jpg"]
    assert "summary: 3 inputs, 2 labelled, 1 failed (read 0, decode 1, inference 0), 3 skipped" in line
    predictions, pred_files = read_rows(out, "predictions")
    errors, err_files = read_rows(out, "errors")
    assert [os.path.basename(f) for f in pred_files + err_files] == [
        "predictions-00000-of-00001.parquet",
        "predictions-r001-00000-of-00001.parquet",
        "errors-00000-of-00001.parquet",
        "errors-r001-00000-of-00001.parquet",
    ]
    # The union holds each input exactly once.
    assert sorted(os.path.basename(r["uri"]) for r in predictions) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert sorted(os.path.basename(r["uri"]) for r in errors) == ["x.jpg", "y.jpg"]
    # Resuming again finds nothing to do and writes empty attempt-2 shards.
    FaultyFileSystem.reset()
    line = run_here(capsys, "--input", faulty(folder) + "/*", *args, "--resume")
    assert not FaultyFileSystem.opens
    assert "summary: 0 inputs, 0 labelled, 0 failed (read 0, decode 0, inference 0), 6 skipped" in line
    assert len(read_rows(out, "predictions")[0]) == 4 and len(read_rows(out, "errors")[0]) == 2
    # A plain re-run replaces every attempt's shards.
    run_here(capsys, "--input", faulty(folder) + "/a.jpg", *args)
    assert [os.path.basename(p) for p in sorted(out.glob("*.parquet"))] == [
        "errors-00000-of-00001.parquet",
        "predictions-00000-of-00001.parquet",
    ]


@pytest.mark.slow
def test_resume_retry_errors_drops_the_old_error_rows(tmp_path, npz_path, capsys, read_rows):
    folder = photos_dir(tmp_path, ["a.jpg", "b.jpg", "x.jpg"])
    other = photos_dir(tmp_path / "o", ["z.jpg"], bad={"z.jpg"})  # an input of the first run only
    out = tmp_path / "out"
    args = ("--output", out, "--weights", npz_path)
    FaultyFileSystem.faults[str(folder / "x.jpg")] = ("always", 0)  # the bucket was down for x
    run_here(capsys, "--input", faulty(folder) + "/*", "--input", f"{other}/*", *args)
    assert sorted(os.path.basename(r["uri"]) for r in read_rows(out, "errors")[0]) == ["x.jpg", "z.jpg"]
    FaultyFileSystem.reset()  # the bucket is back
    # Plain --resume keeps earlier failures as they are.
    line = run_here(capsys, "--input", faulty(folder) + "/*", *args, "--resume")
    assert "summary: 0 inputs" in line and not FaultyFileSystem.opens
    # --retry_errors tries x again; z (not an input now) keeps its row; no old row remains.
    line = run_here(capsys, "--input", faulty(folder) + "/*", *args, "--resume", "--retry_errors")
    assert "summary: 1 inputs, 1 labelled, 0 failed" in line and "1 earlier errors retried" in line
    predictions, _ = read_rows(out, "predictions")
    errors, err_files = read_rows(out, "errors")
    assert sorted(os.path.basename(r["uri"]) for r in predictions) == ["a.jpg", "b.jpg", "x.jpg"]
    assert [(os.path.basename(r["uri"]), r["error_type"]) for r in errors] == [("z.jpg", "not_an_image")]
    assert [os.path.basename(f) for f in err_files] == ["errors-r002-00000-of-00001.parquet"]


def test_resume_refuses_other_settings(tmp_path, npz_path, capsys):
    folder = photos_dir(tmp_path, ["a.jpg"])
    out = tmp_path / "out"
    run_here(capsys, "--input", f"{folder}/*", "--output", out, "--weights", npz_path)
    with pytest.raises(ConfigError, match=r"other settings \(top_k '5' -> '3'\)"):
        run_here(
            capsys,
            "--input",
            f"{folder}/*",
            "--output",
            out,
            "--weights",
            npz_path,
            "--resume",
            "--top_k",
            "3",
        )
    with pytest.raises(ConfigError, match="--retry_errors only applies with --resume"):
        run_here(capsys, "--input", f"{folder}/*", "--output", out, "--weights", npz_path, "--retry_errors")


def test_attempt_numbers_follow_the_shards_found():
    # A fresh output is attempt 0 (plain names); after a first run, attempt 1; after r001
    # and r004 (r002/r003 replaced by --retry_errors), attempt 5.
    assert Plan("out").attempt == 0
    first = Shards(predictions=("out/predictions-00000-of-00002.parquet",))
    assert Plan("out", first).attempt == 1
    later = Shards(
        predictions=("out/predictions-00000-of-00001.parquet", "out/predictions-r001-00000-of-00001.parquet"),
        errors=("out/errors-r004-00000-of-00001.parquet",),
    )
    assert Plan("out", later).attempt == 5


def test_resume_refuses_a_table_without_fc7_when_embeddings_are_asked(tmp_path, npz_path, capsys, read_rows):
    folder = photos_dir(tmp_path, ["a.jpg"])
    out = tmp_path / "out"
    run_here(capsys, "--input", f"{folder}/*", "--output", out, "--weights", npz_path)
    _, files = read_rows(out, "predictions")
    previous = find_shards(str(out))
    check_compatible(previous, read_provenance(files[0]), embeddings=False)  # the same settings: fine
    with pytest.raises(ConfigError, match=r"other settings \(embeddings False -> True\)"):
        check_compatible(previous, read_provenance(files[0]), embeddings=True)
