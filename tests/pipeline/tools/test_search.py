"""Tests for pipeline.tools.search: queries by file and by id, the weights check, the CLI's output."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.tools import search as search_module
from pipeline.tools.search import EmbeddingIndex, Searcher, WeightsMismatch, decode_images, format_hits
from tests.conftest import SAMPLES
from vgg.preprocess import decode_image
from vgg.sandbox import DecoderCrashed, IsolatedDecoder
from vgg.weights import WeightsInfo


@pytest.fixture(scope="module")
def run(labelled_run, built_index):
    """(predictions directory, index directory) of one pipeline.run over the samples."""
    return labelled_run, built_index


@pytest.fixture(scope="module")
def searcher(run, predictor) -> Searcher:
    return Searcher(str(run[1]), predictor=predictor)


@dataclasses.dataclass
class FakePredictor:
    """Only what Searcher checks: the weights' identity and the precision."""

    weights: WeightsInfo
    precision: str = "float32"


def test_query_by_a_file_in_the_index_finds_itself_first(run, searcher, labelled_fc7):
    _, uris, _ = labelled_fc7
    results = searcher.by_images(uris, k=3)
    for uri, hits in zip(uris, results):
        assert hits[0].uri == uri and hits[0].rank == 1
        # Same file, weights, resize and precision as pipeline.run: the same fc7 up to the
        # float rounding of a different batch, so cosine 1 to 4 decimals.
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.rank for h in hits] == [1, 2, 3]


def test_query_by_id_uses_the_indexed_vector(run, searcher, labelled_fc7):
    ids, uris, fc7 = labelled_fc7
    for row, image_id in enumerate(ids):
        by_id = searcher.by_id(image_id, k=7)
        by_vector = searcher.index.search(fc7[row], k=7)[0]
        assert [h.image_id for h in by_id] == [h.image_id for h in by_vector]
        np.testing.assert_allclose([h.score for h in by_id], [h.score for h in by_vector], atol=1e-6)
        assert (by_id[0].image_id, by_id[0].uri) == (image_id, uris[row])


def test_k_is_capped_at_the_index_size_and_must_be_positive(searcher):
    first = searcher.index.lookup(0)[0]
    assert len(searcher.by_id(first, k=100)) == 7  # only 7 images are indexed
    with pytest.raises(ValueError, match="Received: k=0"):
        searcher.by_id(first, k=0)


def test_refuses_weights_with_another_sha256(run, tmp_path):
    other = tmp_path / "other.npz"
    other.write_bytes(b"not the weights the index was built with")
    with pytest.raises(WeightsMismatch) as caught:
        Searcher(str(run[1]), weights=str(other))
    indexed = EmbeddingIndex(str(run[1])).provenance["weights_sha256"]
    assert indexed in str(caught.value) and "rebuild the index" in str(caught.value)


def test_refuses_a_predictor_with_another_precision(run, predictor):
    fake = FakePredictor(predictor.weights, precision="bfloat16")
    with pytest.raises(WeightsMismatch, match="Received: precision='bfloat16'"):
        Searcher(str(run[1]), predictor=fake)


def test_cli_by_id_prints_json_with_exactly_the_four_keys(run, capsys, labelled_fc7):
    ids, uris, _ = labelled_fc7
    assert search_module.main(["--index", str(run[1]), "--image_id", ids[0], "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [sorted(h) for h in hits] == [["image_id", "rank", "score", "uri"]] * 3
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert (hits[0]["image_id"], hits[0]["uri"]) == (ids[0], uris[0])
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_cli_table_output(searcher):
    hit = searcher.by_id(searcher.index.lookup(0)[0], k=1)
    lines = format_hits(hit, as_json=False).splitlines()
    assert lines[0].split() == ["rank", "score", "image_id", "uri"]
    assert lines[1].split() == ["1", f"{hit[0].score:.4f}", hit[0].image_id, hit[0].uri]


def test_cli_errors_exit_2_with_the_reason(run, tmp_path, capsys, labelled_fc7):
    other = tmp_path / "other.npz"
    other.write_bytes(b"x")
    image = labelled_fc7[1][0]
    assert search_module.main(["--index", str(run[1]), "--image", image, "--weights", str(other)]) == 2
    assert "have sha256" in capsys.readouterr().err
    assert search_module.main(["--index", str(run[1]), "--image_id", "nope"]) == 2
    assert "image_id 'nope' is not in the index" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:  # argparse: --image without --weights
        search_module.main(["--index", str(run[1]), "--image", image])
    assert caught.value.code == 2
    assert "--image needs --weights" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_by_image_end_to_end(run, npz_path, labelled_fc7):
    """The documented command, in a fresh process: embeds the magenta square and finds it."""
    magenta = next(uri for uri in labelled_fc7[1] if uri.endswith("magenta.png"))
    command = [sys.executable, "-m", "pipeline.search", "--index", str(run[1]), "--image", magenta]
    done = subprocess.run(
        [*command, "--weights", npz_path, "--k", "2", "--json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    hits = json.loads(done.stdout)
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["uri"] == magenta
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert "UNTRAINED" in done.stderr  # conftest's weights are synthesized, and the CLI says so


# ------------------------------------------------------------------ untrusted query images


def test_query_images_are_decoded_in_a_child_process(tmp_path):
    # The same decoder child the job uses: a segfault or a hang in it is an exception here,
    # and this process (and the next query) carries on.
    from tests.pipeline.faults import CRASH, HANG, crashing_decode

    photo = (SAMPLES / "coffee.jpg").read_bytes()
    for name, data in {"crash.jpg": CRASH + photo, "hang.jpg": HANG, "ok.jpg": photo}.items():
        (tmp_path / name).write_bytes(data)
    decoder = IsolatedDecoder(crashing_decode, timeout_s=2)
    try:
        with pytest.raises(DecoderCrashed) as crashed:
            decode_images([str(tmp_path / "crash.jpg")], resize="squash", decoder=decoder)
        with pytest.raises(DecoderCrashed) as hung:
            decode_images([str(tmp_path / "hang.jpg")], resize="squash", decoder=decoder)
        pixels = decode_images([str(tmp_path / "ok.jpg")], resize="squash", decoder=decoder)
    finally:
        decoder.close()
    assert (crashed.value.error_type, hung.value.error_type) == ("crashed", "timeout")
    np.testing.assert_array_equal(pixels[0], decode_image(photo).pixels)


def test_cli_query_image_that_crashes_the_decoder_is_one_error_line(
    run, npz_path, tmp_path, capsys, monkeypatch
):
    from tests.pipeline.faults import CRASH, crashing_decode

    crash = tmp_path / "crash.jpg"
    crash.write_bytes(CRASH + (SAMPLES / "coffee.jpg").read_bytes())
    monkeypatch.setattr(search_module, "decode_image", crashing_decode)  # what the child runs
    argv = ["--index", str(run[1]), "--weights", npz_path, "--image"]
    assert search_module.main([*argv, str(crash)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: {crash}: crashed: the decoder process died while decoding this input "
        "(killed by signal SIGSEGV)"
    )


def test_cli_query_image_that_is_not_usable_is_one_error_line(run, npz_path, tmp_path, capsys):
    cut = tmp_path / "cut.jpg"
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    cut.write_bytes(photo[: len(photo) // 2])
    assert search_module.main(["--index", str(run[1]), "--weights", npz_path, "--image", str(cut)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {cut}: truncated: the JPEG data ({len(photo) // 2} bytes) ends before")
