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
import shutil
import socket
import subprocess

import numpy as np
import pytest

import pipeline.run as job
from pipeline import storage
from pipeline.contract import ERROR_TYPES, image_id
from pipeline.job.read import shards
from tests.conftest import SAMPLES
from tests.pipeline.faults import FaultyFileSystem, faulty
from tests.pipeline.jobs import run_here, run_job


@pytest.fixture(autouse=True)
def no_faults():
    FaultyFileSystem.reset()
    yield
    FaultyFileSystem.reset()


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


def check_outcomes(read_rows, out, folder, expected, uri=str):
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


def test_corpus_every_kind_accounted_for(corpus, tmp_path, npz_path, capsys, read_rows):
    # All 40 kinds, the read faults injected: unreadable (permission) and deleted
    # between the launcher's match and the worker's read. Decoding isolated (default).
    folder = tmp_path / "in"
    expected = copy_corpus(corpus, folder)
    inject(folder, expected)
    out = tmp_path / "out"
    line = run_here(capsys, "--input", faulty(folder) + "/*", "--output", out, "--weights", npz_path)
    check_outcomes(read_rows, out, folder, expected, uri=faulty)
    ok, failed = counts(expected)
    # 19 predictions; 2 read errors (permission, vanished); 19 decode errors.
    assert (ok, failed) == (19, {"read": 2, "decode": 19})
    assert line.startswith("summary: 40 inputs, 19 labelled, 21 failed (read 2, decode 19, inference 0);")
    # Permanent read errors are not retried: one open each.
    assert FaultyFileSystem.opens[str(folder / "unreadable.jpg")] == 1
    assert FaultyFileSystem.opens[str(folder / "deleted.jpg")] == 1


@pytest.mark.slow
def test_corpus_real_job_with_bundle_repeat(corpus, tmp_path, npz_path, read_rows):
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
    predictions, errors = check_outcomes(read_rows, out, folder, expected)
    ok, failed = counts(expected)
    assert f"summary: {len(expected)} inputs, {ok} labelled, {sum(failed.values())} failed " in done.stdout
    # Replayed bundles leave nothing behind: one file per table, no temp files, nothing uncommitted.
    assert sorted(p.relative_to(out).as_posix() for p in out.iterdir()) == ["errors", "predictions"]
    for table in ("errors", "predictions"):
        names = sorted(p.name for p in (out / table).iterdir())
        assert names[0] == "_delta_log" and len(names) == 2 and names[1].endswith("-00000-of-00001.parquet")
    labels = {r["uri"]: [x["class_index"] for x in r["labels"]] for r in predictions}
    assert all(len(v) == 5 for v in labels.values())


def test_bundle_repeat_gives_the_same_rows(corpus, tmp_path, npz_path, capsys, read_rows):
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


@pytest.mark.slow
def test_faults_in_a_job(tmp_path, npz_path, capsys, monkeypatch, read_rows):
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
    monkeypatch.setattr(shards, "read_bytes", functools.partial(storage.read_bytes, backoff_s=0.01))
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


# ------------------------------------------------------------- odd names and special files


def test_every_listed_entry_is_one_row(tmp_path, npz_path, capsys, read_rows):
    # What a real folder can hold: a name that is not UTF-8, one with a backslash, links
    # that lead nowhere or in a loop, a FIFO, a socket, a sub-folder; and, in --input_list,
    # a name with spaces at both ends. Each is one row, the job ends, and the summary counts
    # what bash lists.
    folder = tmp_path / "odd"
    folder.mkdir()
    raw = os.fsencode(folder)
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    for name in (b"caf\xe9.jpg", b"back\\slash.jpg"):
        with open(raw + b"/" + name, "wb") as handle:
            handle.write(photo)
    os.symlink("nowhere.jpg", folder / "dangling.jpg")
    os.symlink("loop-b.jpg", folder / "loop-a.jpg")
    os.symlink("loop-a.jpg", folder / "loop-b.jpg")
    os.mkfifo(folder / "fifo.jpg")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.jpg").write_bytes(photo)  # under the folder `*` lists, not listed itself
    spaced = tmp_path / "  spaced .jpg "
    spaced.write_bytes(photo)
    listed = tmp_path / "list.txt"
    # The FIFO once more: one input however often it is named.
    listed.write_text(f"{spaced}\n{folder}/fifo.jpg\n")
    out = tmp_path / "out"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(folder / "socket.jpg"))
        shell = subprocess.run(
            ["bash", "-O", "globstar", "-c", 'printf "%s\\0" "$1"/*', "_", str(folder)],
            capture_output=True,
            check=True,
        )
        listing = shell.stdout.count(b"\0")
        line = run_here(
            capsys,
            *("--input", f"{folder}/*", "--input_list", listed, "--output", out, "--weights", npz_path),
        )
    assert listing == 8
    # 8 entries the pattern lists + the spaced name: 3 photos labelled, 6 errors rows.
    assert line.startswith(
        f"summary: {listing + 1} inputs, 3 labelled, 6 failed (read 6, decode 0, inference 0);"
    )
    predictions, _ = read_rows(out, "predictions")
    errors, _ = read_rows(out, "errors")
    rows = {r["uri"]: r for r in predictions + errors}
    assert len(rows) == len(predictions) + len(errors) == listing + 1  # each exactly once
    assert all(r["image_id"] == image_id(r["uri"]) for r in rows.values())
    assert sorted(r["uri"] for r in predictions) == sorted(
        [f"file://{folder}/caf%E9.jpg", f"{folder}/back\\slash.jpg", str(spaced)]
    )
    assert {r["uri"].removeprefix(f"{folder}/"): r["error_type"] for r in errors} == {
        "dangling.jpg": "not_found",
        "loop-a.jpg": "symlink_loop",
        "loop-b.jpg": "symlink_loop",
        "fifo.jpg": "not_a_file",
        "socket.jpg": "not_a_file",
        "sub": "not_a_file",
    }


def test_a_bare_folder_as_input_is_one_error_line(tmp_path, npz_path, capsys):
    # The most natural thing to type: refused on the launcher, exit 2, one line naming DIR/**.
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes())
    out = tmp_path / "out"
    code = job.main(["--input", str(tmp_path / "photos"), "--output", str(out), "--weights", npz_path])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and not out.exists()
    assert err.startswith(f"error: --input '{tmp_path}/photos' is a folder")
    assert f"'{tmp_path}/photos/**" in err


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
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes())
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
