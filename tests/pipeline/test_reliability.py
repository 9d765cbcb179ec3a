"""Each input ends in predictions or errors exactly once: bad files, faults, crashes, re-runs, resumes.

Most runs are `pipeline.run.run` in this process on TestPipeline with the fake model
handler (tests/pipeline/fakes.py): the launcher, the real reader, decoder and Parquet
writers, without TensorFlow. One run is the real `python -m pipeline.run` with the
(synthesized, UNTRAINED) VGG16 over the whole generated corpus. Read faults come from
the `faulty://` test filesystem (tests/pipeline/faults.py).
"""

from __future__ import annotations

import functools
import operator
import os
import pickle
import shutil

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

import pipeline.run as job
from pipeline import io
from pipeline.io import ReadError, image_id, read_bytes
from pipeline.options import ConfigError
from pipeline.schema import ERROR_TYPES
from pipeline.transforms import LabelImages
from tests.conftest import SAMPLES
from tests.pipeline.fakes import FakeHandler
from tests.pipeline.faults import CRASH, HANG, FaultyFileSystem, crashing_decode, faulty
from tests.pipeline.jobs import run_job

FAST_RETRIES = functools.partial(read_bytes, backoff_s=0.01)


@pytest.fixture(autouse=True)
def no_faults():
    FaultyFileSystem.reset()
    yield
    FaultyFileSystem.reset()


def read_rows(folder, name):
    """All rows of every `name-*-of-*.parquet` shard in folder, as a list (duplicates kept)."""
    files = sorted(str(p) for p in folder.glob(f"{name}-*-of-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()], files


def run_here(capsys, *args, beam_flags=(), handler=None, reader=FAST_RETRIES, decode=None):
    """pipeline.run.run in this process with the fake model; returns its summary line."""
    job.run(
        [*map(str, args)],
        test_pipeline=TestPipeline(options=PipelineOptions(list(beam_flags))),
        handler=handler or FakeHandler(max_batch_size=8),
        reader=reader,
        decode=decode,
    )
    return capsys.readouterr().out.strip().splitlines()[-1]


def copy_corpus(corpus, target, *, keep=lambda name, expected: True):
    folder, expected = corpus
    target.mkdir()
    kept = {}
    for name, want in expected.items():
        if keep(name, want):
            shutil.copyfile(folder / name, target / name)
            kept[name] = want
    return kept


def inject(folder, expected) -> None:
    for name, want in expected.items():
        if want.fault:
            FaultyFileSystem.faults[str(folder / name)] = (want.fault, 0)


def check_outcomes(out, folder, expected, uri=str):
    """Each file exactly once, in the table and with the (stage, error_type) or size expected."""
    predictions, _ = read_rows(out, "predictions")
    errors, _ = read_rows(out, "errors")
    ids = [r["image_id"] for r in predictions + errors]
    assert len(ids) == len(set(ids)) == len(expected)  # once each, nothing lost
    by_uri = {r["uri"]: r for r in predictions + errors}
    for name, want in expected.items():
        row = by_uri[uri(folder / name)]
        assert row["image_id"] == image_id(row["uri"])
        if want.stage is None:
            assert (row.get("width"), row.get("height")) == want.size, (name, row)
        else:
            assert (row.get("stage"), row.get("error_type")) == (want.stage, want.error_type), (name, row)
            assert row["error_type"] in ERROR_TYPES[row["stage"]]
            assert row["message"].startswith(f"{want.error_type}: ") or want.stage == "read", row
    return predictions, errors


def counts(expected):
    ok = sum(w.stage is None for w in expected.values())
    by_stage = {s: sum(w.stage == s for w in expected.values()) for s in ("read", "decode")}
    return ok, by_stage


# ------------------------------------------------------------------- the corpus


def test_corpus_every_kind_accounted_for(corpus, tmp_path, npz_path, capsys):
    # All 40 kinds, the read faults injected: unreadable (permission) and deleted
    # between the launcher's match and the worker's read. Decoding isolated (default).
    folder = tmp_path / "in"
    expected = copy_corpus(corpus, folder)
    inject(folder, expected)
    out = tmp_path / "out"
    line = run_here(capsys, "--input", faulty(folder) + "/*", "--output", out, "--weights", npz_path)
    check_outcomes(out, folder, expected, uri=faulty)
    ok, failed = counts(expected)
    # 19 predictions; 2 read errors (permission, vanished); 19 decode errors.
    assert (ok, failed) == (19, {"read": 2, "decode": 19})
    assert line.startswith("summary: 40 inputs, 19 labelled, 21 failed (read 2, decode 19, inference 0);")
    # Permanent read errors are not retried: one open each.
    assert FaultyFileSystem.opens[str(folder / "unreadable.jpg")] == 1
    assert FaultyFileSystem.opens[str(folder / "deleted.jpg")] == 1


def test_corpus_real_job_with_bundle_repeat(corpus, tmp_path, npz_path):
    # The real `python -m pipeline.run` and VGG16, each bundle replayed twice more
    # (Beam's FnApiRunner honours --direct_runner_bundle_repeat: fn_runner.py runs every
    # bundle that many extra times as dry runs before the one whose output counts).
    # Read faults cannot be injected into another process; as non-root the unreadable
    # file is made so with chmod, as root (whom permissions do not stop) it is left out.
    can_chmod = os.geteuid() != 0
    folder = tmp_path / "in"
    expected = copy_corpus(
        corpus, folder, keep=lambda n, w: w.fault is None or (w.fault == "permission" and can_chmod)
    )
    if can_chmod:
        os.chmod(folder / "unreadable.jpg", 0)
    out = tmp_path / "out"
    done = run_job(
        "--input",
        f"{folder}/*",
        "--output",
        out,
        "--weights",
        npz_path,
        "--batch_size",
        "8",
        "--direct_runner_bundle_repeat=2",
    )
    assert "Traceback" not in done.stderr
    predictions, errors = check_outcomes(out, folder, expected)
    ok, failed = counts(expected)
    assert f"summary: {len(expected)} inputs, {ok} labelled, {sum(failed.values())} failed " in done.stdout
    # Replayed bundles leave nothing behind: one shard each, no temp files.
    assert sorted(p.name for p in out.iterdir()) == [
        "errors-00000-of-00001.parquet",
        "predictions-00000-of-00001.parquet",
    ]
    labels = {r["uri"]: [x["class_index"] for x in r["labels"]] for r in predictions}
    assert all(len(v) == 5 for v in labels.values())


def test_bundle_repeat_gives_the_same_rows(corpus, tmp_path, npz_path, capsys):
    folder = tmp_path / "in"
    expected = copy_corpus(corpus, folder, keep=lambda n, w: "large" not in n and w.fault is None)
    uris = faulty(folder) + "/*"
    run_here(capsys, "--input", uris, "--output", tmp_path / "once", "--weights", npz_path)
    assert set(FaultyFileSystem.opens.values()) == {1}
    FaultyFileSystem.reset()
    run_here(
        capsys,
        *("--input", uris, "--output", tmp_path / "thrice", "--weights", npz_path),
        beam_flags=["--direct_runner_bundle_repeat=2"],
    )
    # Proof that the bundles were replayed: every file was opened 1 + 2 times.
    assert set(FaultyFileSystem.opens.values()) == {3}
    by_id = operator.itemgetter("image_id")
    total = 0
    for name in ("predictions", "errors"):
        once, _ = read_rows(tmp_path / "once", name)
        thrice, _ = read_rows(tmp_path / "thrice", name)
        assert len(thrice) == len({r["image_id"] for r in thrice})  # no duplicate image_id
        assert sorted(once, key=by_id) == sorted(thrice, key=by_id)  # every column equal
        total += len(thrice)
    assert total == len(expected)  # and nothing lost


# ------------------------------------------------------------------------ faults


def test_read_retries_with_backoff_then_succeeds(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8 bytes")
    slept = []
    FaultyFileSystem.faults[str(path)] = ("transient", 3)
    assert read_bytes(faulty(path), sleep=slept.append) == b"\xff\xd8 bytes"
    # 3 failures, 3 sleeps doubling from 0.5 s, success on the 4th and last attempt.
    assert slept == [0.5, 1.0, 2.0]
    assert FaultyFileSystem.opens[str(path)] == 4


@pytest.mark.parametrize(
    ("fault", "error_type", "opens", "sleeps"),
    [
        ("always", "read_error", 4, [0.5, 1.0, 2.0]),  # gives up after 4 attempts
        ("permission", "permission_denied", 1, []),  # permanent: no retry
        ("vanish", "not_found", 1, []),
    ],
)
def test_permanent_read_errors_are_not_retried_forever(tmp_path, fault, error_type, opens, sleeps):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"data")
    FaultyFileSystem.faults[str(path)] = (fault, 0)
    slept = []
    with pytest.raises(ReadError) as info:
        read_bytes(faulty(path), sleep=slept.append)
    assert info.value.error_type == error_type
    assert (FaultyFileSystem.opens[str(path)], slept) == (opens, sleeps)
    # ReadError survives pickling (Beam ships exceptions between processes).
    assert pickle.loads(pickle.dumps(info.value)).error_type == error_type


def test_oversized_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "huge.jpg"
    path.write_bytes(b"x" * 1001)
    with pytest.raises(ReadError) as info:
        read_bytes(str(path), max_bytes=1000)
    assert info.value.error_type == "too_large"
    assert read_bytes(str(path), max_bytes=1001) == b"x" * 1001


def test_faults_in_a_job(tmp_path, npz_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    faults = {
        "flaky1.jpg": ("transient", 1),
        "flaky2.jpg": ("transient", 2),
        "flaky3.jpg": ("transient", 3),
        "down.jpg": ("always", 0),
        "locked.jpg": ("permission", 0),
        "gone.jpg": ("vanish", 0),
        "fine.jpg": (None, 0),
    }
    for name, fault in faults.items():
        (folder / name).write_bytes(photo)
        if fault[0]:
            FaultyFileSystem.faults[str(folder / name)] = fault
    (folder / "big.jpg").write_bytes(photo + b"\0" * 1000)  # over --max_input_bytes below
    out = tmp_path / "out"
    # The job's own reader, so that --max_input_bytes is what it uses, with 10 ms
    # backoff instead of 0.5 s to keep the test fast.
    monkeypatch.setattr(io, "read_bytes", functools.partial(io.read_bytes, backoff_s=0.01))
    line = run_here(
        capsys,
        *("--input", faulty(folder) + "/*", "--output", out, "--weights", npz_path),
        *("--max_input_bytes", len(photo) + 10),
        reader=None,
    )
    predictions, _ = read_rows(out, "predictions")
    errors, _ = read_rows(out, "errors")
    assert sorted(os.path.basename(r["uri"]) for r in predictions) == [
        "fine.jpg",
        "flaky1.jpg",
        "flaky2.jpg",
        "flaky3.jpg",
    ]
    assert sorted((os.path.basename(r["uri"]), r["stage"], r["error_type"]) for r in errors) == [
        ("big.jpg", "read", "too_large"),
        ("down.jpg", "read", "read_error"),
        ("gone.jpg", "read", "not_found"),
        ("locked.jpg", "read", "permission_denied"),
    ]
    # Retries: 1 + 2 + 3 for the flaky files (recovered) + 3 for the one that stays down.
    assert "; 9 read retries, 0 decoder crashes/timeouts contained" in line
    assert line.startswith("summary: 8 inputs, 4 labelled, 4 failed (read 4, decode 0, inference 0);")


def test_decoder_crash_and_hang_are_contained(tmp_path):
    # A real segfault (and a decode that never returns) inside the decoder: each costs
    # one errors row; the worker, and the images after them, carry on.
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    files = {"a.jpg": photo, "crash.jpg": CRASH + photo, "hang.jpg": HANG, "b.jpg": photo}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(sorted(str(tmp_path / n) for n in files))
            | LabelImages(FakeHandler(max_batch_size=1), decode=crashing_decode, decode_timeout_s=2)
        )
        assert_that(
            out["predictions"] | beam.Map(lambda r: os.path.basename(r["uri"])),
            equal_to(["a.jpg", "b.jpg"]),
            label="labelled",
        )
        assert_that(
            out["errors"] | beam.Map(lambda r: (os.path.basename(r["uri"]), r["stage"], r["message"])),
            equal_to(
                [
                    (
                        "crash.jpg",
                        "decode",
                        "crashed: the decoder process died while decoding this input "
                        "(killed by signal SIGSEGV)",
                    ),
                    (
                        "hang.jpg",
                        "decode",
                        "timeout: decoding took longer than 2 s; the decoder process was killed",
                    ),
                ]
            ),
            label="contained",
        )


# ---------------------------------------------------------------- re-runs, resume


def photos_dir(tmp_path, names, *, bad=()):
    folder = tmp_path / "in"
    folder.mkdir(parents=True, exist_ok=True)
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    for name in names:
        (folder / name).write_bytes(b"not a photo" if name in bad else photo)
    return folder


def test_rerun_replaces_never_appends(tmp_path, npz_path, capsys):
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


def test_resume_labels_only_what_is_missing(tmp_path, npz_path, capsys):
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


def test_resume_retry_errors_drops_the_old_error_rows(tmp_path, npz_path, capsys):
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


# ------------------------------------------------------------------ error budget


def test_error_budget_fails_after_writing(tmp_path, npz_path, capsys, monkeypatch):
    folder = photos_dir(tmp_path, ["a.jpg", "x.jpg", "y.jpg", "z.jpg"], bad={"x.jpg", "y.jpg", "z.jpg"})
    out = tmp_path / "out"
    real_run = job.run
    monkeypatch.setattr(
        job, "run", lambda argv: real_run(argv, test_pipeline=TestPipeline(), handler=FakeHandler())
    )
    argv = ["--input", f"{folder}/*", "--output", str(out), "--weights", npz_path]
    assert job.main([*argv, "--max_error_fraction", "0.5"]) == 1
    captured = capsys.readouterr()
    assert (
        "error: 3 of 4 inputs failed (75.0%), more than --max_error_fraction=0.5. Every row is written"
        in captured.err
    )
    # Everything was written before the job failed.
    assert len(read_rows(out, "predictions")[0]) == 1 and len(read_rows(out, "errors")[0]) == 3
    assert job.main([*argv, "--max_error_fraction", "0.75"]) == 0  # 3/4 is not more than 0.75
    # The default, 1.0, never fails: bad files are expected, each is an errors row.
    assert job.main(argv) == 0


# ------------------------------------------------------------- untrusted weights


class _Payload:
    """Unpickling this runs code: it creates the marker file. A loader that unpickles fails the test."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tiny_arrays(shapes_ok=False):
    from vgg.architecture import LAYER_NAMES, WEIGHT_SHAPES

    arrays = {}
    for layer in LAYER_NAMES:
        kernel, bias = WEIGHT_SHAPES[layer]
        arrays[f"{layer}_W"] = np.zeros(kernel if shapes_ok else (1,), np.float32)
        arrays[f"{layer}_b"] = np.zeros(bias if shapes_ok else (1,), np.float32)
    return arrays


def _lambda_h5(path, marker):
    """An h5 holding a whole Keras model whose Lambda layer's code would create `marker`."""
    import base64
    import json
    import marshal

    import h5py

    code = compile(f"open({str(marker)!r}, 'w')", "<lambda>", "eval")
    config = {
        "class_name": "Functional",
        "config": {
            "layers": [
                {
                    "class_name": "Lambda",
                    "config": {
                        "name": "evil",
                        "function": [base64.b64encode(marshal.dumps(code)).decode(), None, None],
                        "function_type": "lambda",
                    },
                }
            ]
        },
    }
    with h5py.File(path, "w") as root:
        root.attrs["model_config"] = json.dumps(config).encode()
        root.attrs["keras_version"] = b"2.15.0"
        root.create_group("model_weights")


@pytest.mark.parametrize("case", ["pickle", "shapes", "sha256", "lambda_h5"])
def test_untrusted_weights_are_refused_before_any_image_is_read(case, tmp_path, npz_path, capsys):
    folder = photos_dir(tmp_path, ["a.jpg"])
    marker = tmp_path / "code_ran"
    weights = tmp_path / "w.npz"
    extra = []
    if case == "pickle":
        arrays = _tiny_arrays()
        arrays["fc8_b"] = np.array([_Payload(marker)], dtype=object)
        np.savez(weights, **arrays)
        want = "'fc8_b' is an object array, which only pickle can load"
    elif case == "shapes":
        np.savez(weights, **_tiny_arrays())
        want = "has shape (1,); expected"
    elif case == "sha256":
        weights = npz_path
        extra = ["--weights_sha256", "0" * 64]
        want = "sha256 is"
    else:
        weights = tmp_path / "model.h5"
        _lambda_h5(weights, marker)
        want = "holds a whole Keras model with Lambda layers"
    out = tmp_path / "out"
    code = job.main(
        ["--input", faulty(folder) + "/*", "--output", str(out), "--weights", str(weights), *extra]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and want in err, err
    assert "Traceback" not in err
    assert not FaultyFileSystem.opens  # no image read
    assert not out.exists()  # nothing written
    assert not marker.exists()  # no code from the file ran


# ------------------------------------------------------------------------ fuzzing


def test_fuzzed_photos_never_crash_and_are_all_accounted_for(tmp_path):
    # CI size; the documented full run is `python -m tests.fuzz --count 1000 --seed 0`.
    from tests import fuzz

    first = [data for *_, data in fuzz.mutants(20, seed=0)]
    assert first == [data for *_, data in fuzz.mutants(20, seed=0)]  # a fixed seed, the same files
    report = fuzz.fuzz_decode(200, seed=0)
    assert report.tried == sum(report.outcomes.values()) == 200
    # Every mutation kind was tried, and none crashed, hung or raised outside the vocabulary.
    assert set(report.by_mutation) == set(fuzz.MUTATIONS)
    assert (report.crashes, report.findings) == (0, [])
    assert {o.split("/")[1] for o in report.outcomes if o != "prediction"} <= set(ERROR_TYPES["decode"])
    inputs, predictions, errors = fuzz.fuzz_pipeline(30, 0, tmp_path)
    assert inputs == predictions + errors == 30


def test_help_documents_the_reliability_options(capsys):
    from pipeline.options import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in (
        "--resume",
        "previous failures stay failures unless --retry_errors",
        "--retry_errors",
        "--decode_isolation {subprocess,none}",
        "(default: subprocess)",
        "--decode_timeout_s",
        "--max_input_bytes",
        "--max_error_fraction",
        "1.0 never fails",
    ):
        assert fragment in text, fragment
