"""pipeline.job.resume: a re-run replaces the output; --resume labels only what is missing; each once."""

from __future__ import annotations

import os

import pytest

from pipeline import ConfigError
from pipeline.contract import Shards
from pipeline.job.resume import Plan, check_compatible
from pipeline.storage import read_provenance
from pipeline.table import next_run, snapshot
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
    # A re-run over fewer inputs leaves only those: the old files are replaced.
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
    # Run 2 added its own files beside run 1's.
    assert [os.path.basename(f)[:11] for f in pred_files + err_files] == ["part-r00001", "part-r00002"] * 2
    # The union holds each input exactly once.
    assert sorted(os.path.basename(r["uri"]) for r in predictions) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert sorted(os.path.basename(r["uri"]) for r in errors) == ["x.jpg", "y.jpg"]
    # Resuming again finds nothing to do and commits empty files (run 3).
    FaultyFileSystem.reset()
    line = run_here(capsys, "--input", faulty(folder) + "/*", *args, "--resume")
    assert not FaultyFileSystem.opens
    assert "summary: 0 inputs, 0 labelled, 0 failed (read 0, decode 0, inference 0), 6 skipped" in line
    assert len(read_rows(out, "predictions")[0]) == 4 and len(read_rows(out, "errors")[0]) == 2
    # A plain re-run replaces every earlier run's files, and deletes them once committed.
    run_here(capsys, "--input", faulty(folder) + "/a.jpg", *args)
    assert sorted(p.relative_to(out).as_posix().split("-")[:2] for p in out.glob("*/*.parquet")) == [
        ["errors/part", "r00004"],
        ["predictions/part", "r00004"],
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
    # The errors table's files are run 3's alone: it replaced them in its commit.
    assert [os.path.basename(f)[:11] for f in err_files] == ["part-r00003"]


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


def test_run_numbers_follow_the_runs_committed(tmp_path, npz_path, capsys):
    folder = photos_dir(tmp_path, ["a.jpg"])
    out = tmp_path / "out"
    assert next_run(str(out)) == 1  # a fresh output
    for expected in (1, 2):
        run_here(capsys, "--input", f"{folder}/*", "--output", out, "--weights", npz_path)
        assert snapshot(str(out)).run == expected and next_run(str(out)) == expected + 1


def test_a_plans_modes_say_what_its_commit_replaces():
    fresh, resumed = Plan("out"), Plan("out", resume=True, previous=Shards(predictions=("p",)))
    retried = Plan("out", resume=True, retry_errors=True)
    assert (fresh.replace_predictions, fresh.replace_errors) == (True, True)
    assert (resumed.replace_predictions, resumed.replace_errors) == (False, False)
    assert (retried.replace_predictions, retried.replace_errors) == (False, True)
    assert resumed.resuming and not retried.resuming  # nothing committed to skip against


def test_resume_refuses_a_table_without_fc7_when_embeddings_are_asked(tmp_path, npz_path, capsys, read_rows):
    folder = photos_dir(tmp_path, ["a.jpg"])
    out = tmp_path / "out"
    run_here(capsys, "--input", f"{folder}/*", "--output", out, "--weights", npz_path)
    _, files = read_rows(out, "predictions")
    found = snapshot(str(out))
    previous = Shards(predictions=tuple(found.files("predictions")), errors=tuple(found.files("errors")))
    check_compatible(previous, read_provenance(files[0]), embeddings=False)  # the same settings: fine
    with pytest.raises(ConfigError, match=r"other settings \(embeddings False -> True\)"):
        check_compatible(previous, read_provenance(files[0]), embeddings=True)


def test_resume_over_a_truncated_output_file_is_one_error_naming_it(tmp_path, npz_path, capsys, read_rows):
    folder = photos_dir(tmp_path, ["a.jpg", "b.jpg"])
    out = tmp_path / "out"
    args = ("--input", f"{folder}/*", "--output", out, "--weights", npz_path)
    run_here(capsys, *args)
    _, files = read_rows(out, "predictions")
    data = open(files[0], "rb").read()
    with open(files[0], "wb") as handle:
        handle.write(data[: len(data) // 2])  # the storage lost its end, footer and all
    with pytest.raises(ConfigError, match=f"the output's file {files[0]} cannot be read"):
        run_here(capsys, *args, "--resume")
    run_here(capsys, *args)  # a plain run replaces the output, damaged file and all
    assert len(read_rows(out, "predictions")[0]) == 2
