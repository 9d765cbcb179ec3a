"""`python -m vgg.predict`: text and JSON output, fc7, bad images and bad weights."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from vgg.weights import UNTRAINED_WARNING


def predict(*args):
    return subprocess.run(
        [sys.executable, "-m", "vgg.predict", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def json_run(npz_path, sample_photos, tmp_path_factory):
    broken = tmp_path_factory.mktemp("bad") / "broken.jpg"
    broken.write_bytes(b"GIF89a-not-really")
    done = predict("--weights", npz_path, "--json", "--fc7", "--top_k", "3", sample_photos[0],
                   sample_photos[1], broken)  # fmt: skip
    return done, broken


def test_json_lines(json_run, sample_photos, predictor, photo_batch):
    done, broken = json_run
    assert done.returncode == 1  # one image failed; the others are still printed
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["uri"] for r in records] == [str(sample_photos[0]), str(sample_photos[1])]
    probs, fc7 = predictor(photo_batch[:2])
    for record, p, f in zip(records, probs, fc7):
        assert set(record) == {"uri", "labels", "fc7"}
        assert [x["class_index"] for x in record["labels"]] == list(np.argsort(-p, kind="stable")[:3])
        scores = [x["score"] for x in record["labels"]]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, np.sort(p)[::-1][:3], rtol=1e-4)
        assert set(record["labels"][0]) == {"class_index", "wnid", "label", "score"}
        assert len(record["fc7"]) == 4096
        np.testing.assert_allclose(record["fc7"], f, rtol=1e-3, atol=1e-3)
    assert f"error: {broken}: " in done.stderr and "Traceback" not in done.stderr
    # conftest's weights are synthesized: the project's one warning, on a line of its own.
    assert f"WARNING: {UNTRAINED_WARNING}" in done.stderr.splitlines()


@pytest.mark.slow
def test_text_output(npz_path, sample_photos):
    done = predict("--weights", npz_path, "--resize", "center_crop", sample_photos[2])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == str(sample_photos[2]) and len(lines) == 6
    assert lines[1].startswith("  1. 0.") and " n0" in lines[1]


def test_bad_weights_is_one_clear_line(tmp_path, sample_photos):
    bad = tmp_path / "w.npz"
    bad.write_text("not weights")
    done = predict("--weights", bad, sample_photos[0])
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "not an npz (zip), an HDF5" in done.stderr
    assert "Traceback" not in done.stderr


def test_images_are_decoded_in_the_sandbox(tmp_path, sample_photos, capsys, predictor):
    # A decoder that segfaults on one input (tests.pipeline.faults): vgg.predict decodes in a
    # child process, so that image is one error line and the next image is still labelled.
    import argparse

    from tests.pipeline.faults import CRASH, crashing_decode
    from vgg import predict as predict_module
    from vgg.sandbox import IsolatedDecoder

    bad = tmp_path / "crash.jpg"
    bad.write_bytes(CRASH)
    args = argparse.Namespace(
        images=[str(bad), str(sample_photos[0])], batch_size=8, resize="squash", json=True, fc7=False, top_k=5
    )
    decoder = IsolatedDecoder(crashing_decode, timeout_s=60)
    try:
        failed = predict_module._label(args, predictor, decoder, np)
    finally:
        decoder.close()
    out, err = capsys.readouterr()
    assert failed == 1
    assert err.startswith(f"error: {bad}: crashed: ")
    (line,) = out.splitlines()
    assert json.loads(line)["uri"] == str(sample_photos[0])
