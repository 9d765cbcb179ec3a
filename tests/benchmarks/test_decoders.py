"""The JPEG decoder comparison: its candidates' pixels, the timing, the numerics, the verdict, the table."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
from PIL import Image

from benchmarks import decoders, images
from tests.conftest import SAMPLES
from tests.images import encode, exif_tagged
from vgg.preprocess import decode_image


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> dict[str, bytes]:
    """JPEGs that Pillow's draft decodes at each of its scales for 224×224, and two special ones."""
    folder = tmp_path_factory.mktemp("jpegs")
    found = {name: (SAMPLES / name).read_bytes() for name in ("china.jpg", "astronaut.jpg", "retina.jpg")}
    # china.jpg 640×427: full size; astronaut.jpg 512×512: 1/2; retina.jpg 1411×1411: 1/4; this: 1/8.
    big = images.make_noisy(str(folder / "big.jpg"), str(SAMPLES / "rocket.jpg"), (1800, 1800), 4.0)
    with open(big, "rb") as handle:
        found["1800x1800"] = handle.read()
    with Image.open(SAMPLES / "astronaut.jpg") as photo:
        photo.load()
        found["progressive"] = encode(photo, "JPEG", progressive=True, quality=85)
        found["exif 6"] = exif_tagged(photo.crop((0, 0, 512, 300)), "JPEG", 6)  # stored sideways
    return found


def test_pillow_scale_bindings_give_pillows_pixels_exactly(jpegs):
    # simplejpeg (and PyTurboJPEG, where the system has libturbojpeg) run libjpeg-turbo's same
    # IDCT and upsampling at the scale Pillow's draft picks, so the model's input is the same,
    # byte for byte, at every scale, progressive, and turned by EXIF in the shell as decode_image does.
    pytest.importorskip("simplejpeg")
    found = decoders.candidates()
    names = [n for n in ("simplejpeg", "turbojpeg") if found[n][0] is not None]
    for label, data in jpegs.items():
        want = decode_image(data).pixels
        assert want.shape == (224, 224, 3)
        for name in names:
            np.testing.assert_array_equal(found[name][0](data), want, err_msg=f"{name} on {label}")


def test_smallest_scale_decodes_smaller_than_pillow_where_draft_cannot(jpegs):
    # For 640×427 Pillow's draft needs a whole power of two, so decodes full size; the smallest n/8
    # scale not below 224 is 5/8 (400×267). Another IDCT, so other pixels, but the same photo.
    pytest.importorskip("simplejpeg")
    smallest = decoders.candidates()["simplejpeg-n/8"][0]
    data = jpegs["china.jpg"]
    diff = np.abs(smallest(data).astype(int) - decode_image(data).pixels)
    assert diff.max() > 0
    assert diff.mean() < 2.0
    # Where Pillow's scale is already the smallest n/8 one (1/2 of 512 is 256; 3/8 gives 192), the same.
    np.testing.assert_array_equal(
        smallest(jpegs["astronaut.jpg"]), decode_image(jpegs["astronaut.jpg"]).pixels
    )


def test_cheaper_filter_is_a_box_filter(jpegs):
    data = jpegs["astronaut.jpg"]
    with Image.open(SAMPLES / "astronaut.jpg") as photo:
        photo.draft("RGB", (224, 224))
        want = np.asarray(photo.convert("RGB").resize((224, 224), Image.Resampling.BOX))
    np.testing.assert_array_equal(decoders.candidates()["pil-box"][0](data), want)


def test_shell_refuses_what_the_candidates_do_not_cover():
    grey = encode(Image.new("L", (300, 300), 128), "JPEG")
    with pytest.raises(ValueError, match="not a plain JPEG"):
        decoders.candidates()["pil-box"][0](grey)


def test_rates_time_every_decoder_on_every_group_and_restore_the_cores():
    calls = []

    def counting(data: bytes) -> np.ndarray:
        calls.append(data)
        return np.zeros((224, 224, 3), np.uint8)

    entries = [{"group": "a"}, {"group": "a"}, {"group": "b"}]
    before = os.sched_getaffinity(0)
    rows = decoders.rates(entries, [b"1", b"2", b"3"], {"pil": counting, "other": counting}, passes=2)
    assert os.sched_getaffinity(0) == before
    assert [(r["input"], r["files"], sorted(r["images_per_s"])) for r in rows] == [
        ("a", 2, ["other", "pil"]),
        ("b", 1, ["other", "pil"]),
    ]
    assert all(rate > 0 for r in rows for rate in r["images_per_s"].values())
    # Per group: one warm-up per decoder on its first file, then 2 passes x 2 decoders over
    # MIN_DECODES (32) decodes, the group's files repeated: group a's 2 files 16 times each.
    assert len(calls) == 2 * (2 + 2 * 2 * 32)
    assert (calls.count(b"1"), calls.count(b"2"), calls.count(b"3")) == (2 + 64, 64, 2 + 128)


def test_each_distinct_input_runs_through_the_model_once(monkeypatch):
    # A stand-in model (no TensorFlow): class = the first pixel value, fc7 = the image's mean.
    seen = []

    class FakePredictor:
        def __init__(self, weights: str):
            assert weights == "w.npz"

        def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            seen.extend(int(image[0, 0, 0]) for image in batch)
            probs = np.zeros((len(batch), 1000), np.float32)
            probs[np.arange(len(batch)), batch[:, 0, 0, 0]] = 1.0
            return probs, np.repeat(batch.mean(axis=(1, 2, 3))[:, None], 4096, axis=1).astype(np.float32)

    monkeypatch.setitem(sys.modules, "vgg.inference", types.SimpleNamespace(Predictor=FakePredictor))
    a, b, c = (np.full((224, 224, 3), v, np.uint8) for v in (1, 2, 3))
    out = decoders.model_outputs("w.npz", {"pil": np.stack([a, b]), "other": np.stack([a, c])})
    assert sorted(seen) == [1, 2, 3]  # a ran once, for both decoders
    assert out["pil"][0].tolist() == [1, 2] and out["other"][0].tolist() == [1, 3]
    np.testing.assert_array_equal(out["other"][1][0], out["pil"][1][0])
    assert out["other"][1].shape == (2, 4096)


def test_numerics_against_the_baseline_and_the_verdict():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (100, 224, 224, 3), dtype=np.uint8)
    moved = pixels.copy()
    moved[0, 0, 0, 0] = pixels[0, 0, 0, 0] ^ 0x80  # one value of one photo moved by 128
    fc7 = rng.random((100, 4096)).astype(np.float32)
    top1 = np.arange(100) % 7
    one_off = top1.copy()
    one_off[5] += 1  # 99 of 100 photos keep their class: exactly the bound, so it keeps the numbers
    two_off = one_off.copy()
    two_off[6] += 1
    batches = {"pil": pixels, "same": pixels, "moved": moved, "class": pixels, "classes": pixels}
    outputs = {"pil": (top1, fc7), "same": (top1, fc7), "moved": (top1, fc7), "class": (one_off, fc7),
               "classes": (two_off, fc7)}  # fmt: skip
    got = decoders.numerics(batches, outputs)
    assert got["same"] == {
        "photos": 100, "identical_pixels": 1.0, "pixel_diff_max": 0, "pixel_diff_mean": 0.0,
        "top1_equal": 1.0, "fc7_cosine_min": pytest.approx(1.0, abs=1e-6),
        "fc7_cosine_median": pytest.approx(1.0, abs=1e-6), "keeps_numbers": True,
    }  # fmt: skip
    assert got["pil"]["distinct_top1_classes"] == 7
    assert (got["moved"]["identical_pixels"], got["moved"]["pixel_diff_max"]) == (0.99, 128)
    assert got["moved"]["pixel_diff_mean"] == pytest.approx(128 / pixels.size)
    assert (got["class"]["top1_equal"], got["class"]["keeps_numbers"]) == (0.99, True)
    assert (got["classes"]["top1_equal"], got["classes"]["keeps_numbers"]) == (0.98, False)
    # An fc7 below the cosine bound on one photo: its numbers are not kept.
    bent = fc7.copy()
    bent[3] = np.roll(fc7[3], 1)
    worse = decoders.numerics({"pil": pixels, "bent": pixels}, {"pil": (top1, fc7), "bent": (top1, bent)})
    assert worse["bent"]["fc7_cosine_min"] < decoders.FC7_COSINE_MIN
    assert not worse["bent"]["keeps_numbers"]

    # The verdict: the fastest that keeps the numbers and beats pil by MIN_SPEEDUP (1.05), else pil.
    result = {
        "numerics": got,
        "speedup": {"pil": 1.0, "same": 1.04, "moved": 1.2, "class": 1.1, "classes": 2.0},
    }
    assert decoders.verdict(result) == "moved"
    result["speedup"]["moved"] = 1.049
    assert decoders.verdict(result) == "class"
    result["speedup"]["class"] = 1.0
    assert decoders.verdict(result) == "pil"  # nothing worth a change; "classes" is fast but moves top-1


def test_speedups_and_table(machine, machine_line):
    rows = [
        {"input": "bundled photo (JPEG)", "files": 4, "images_per_s": {"pil": 400.0, "simplejpeg": 800.0}},
        {"input": "12 MP JPEG q90, smooth", "files": 6, "images_per_s": {"pil": 50.0, "simplejpeg": 25.0}},
    ]
    assert decoders.speedups(rows) == {"pil": 1.0, "simplejpeg": pytest.approx(1.0)}  # sqrt(2 × 1/2)
    rows[1]["images_per_s"]["simplejpeg"] = 50.0
    speedup = decoders.speedups(rows)
    assert speedup["simplejpeg"] == pytest.approx(2**0.5)  # sqrt(2 × 1)
    numbers = {
        "photos": 10, "identical_pixels": 1.0, "pixel_diff_max": 0, "pixel_diff_mean": 0.0,
        "top1_equal": 1.0, "fc7_cosine_min": 1.0, "fc7_cosine_median": 1.0, "keeps_numbers": True,
    }  # fmt: skip
    result = {
        "machine": machine, "passes": 5, "rows": rows, "speedup": speedup, "use": "simplejpeg",
        "weights": {"name": "vgg16_untrained.npz", "sha256": "ab" * 32, "untrained": True},
        "numerics": {"pil": {**numbers, "distinct_top1_classes": 3}, "simplejpeg": numbers},
        "unavailable": {"turbojpeg": "PyTurboJPEG unavailable: No module named 'turbojpeg'"},
    }  # fmt: skip
    lines = decoders.table(result, markdown=True).splitlines()
    assert lines[:9] == [
        machine_line,
        "",
        "JPEG decoders, resize=squash, one thread pinned to one core, fastest of 5 passes: images/s",
        "",
        "| input | files | pil | simplejpeg |",
        "|---|---:|---:|---:|",
        "| bundled photo (JPEG) | 4 | 400.0 | 800.0 |",
        "| 12 MP JPEG q90, smooth | 6 | 50.0 | 50.0 |",
        "| speed-up over pil (geometric mean) |  | 1.000 | 1.414 |",
    ]
    assert lines[10].endswith("UNTRAINED (synthesized random numbers); 3 distinct top-1 classes under pil)")
    assert "| simplejpeg | 1.000 | 0 | 0.000 | 1.000 | 1.00000 | 1.00000 | yes |" in lines
    assert lines[-4].endswith("the one to use: simplejpeg")
    assert "not measured: turbojpeg: PyTurboJPEG unavailable: No module named 'turbojpeg'" in lines
    assert lines[-1] == decoders.UNTRAINED_NOTE
