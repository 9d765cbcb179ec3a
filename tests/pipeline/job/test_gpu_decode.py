"""pipeline.job.gpu_decode with DALI on the CPU: one output per input, today's error rows and job rows."""

from __future__ import annotations

import logging
import sys
import threading

import numpy as np
import pytest
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.utils.windowed_value import WindowedValue
from PIL import Image

from pipeline import ConfigError, run
from pipeline.job import gpu_decode
from pipeline.job.decode import DecodeConfig, DecodeImage
from pipeline.job.gpu_decode import GpuDecodeImage
from pipeline.job.options import job_parser
from pipeline.job.summary import counters
from tests.conftest import SAMPLES
from tests.images import encode, exif_tagged
from tests.pipeline.fakes import FakeHandler
from tests.pipeline.jobs import FAST_RETRIES
from tests.vgg.test_dali import gpus, without_quantization_table
from vgg.preprocess import decode_image


@pytest.fixture(scope="module")
def mixed() -> dict[str, bytes]:
    """Ten inputs: four JPEGs DALI takes, two images it leaves to the CPU, four broken files."""
    photo = (SAMPLES / "coffee.jpg").read_bytes()
    with Image.open(SAMPLES / "china.jpg") as img:
        china = img.convert("RGB")
    return {
        "coffee.jpg": photo,
        "china.jpg": (SAMPLES / "china.jpg").read_bytes(),
        "china-turned.jpg": exif_tagged(china, "JPEG", 6, quality=90),
        "retina.jpg": (SAMPLES / "retina.jpg").read_bytes(),
        "chelsea.png": (SAMPLES / "chelsea.png").read_bytes(),
        "cmyk.jpg": encode(china.convert("CMYK"), "JPEG"),
        "half.jpg": photo[: len(photo) // 2],
        "notes.jpg": b"<html>not a photo</html>",
        "empty.jpg": b"",
        "no-table.jpg": without_quantization_table(photo),  # DALI fails on it
    }


# Each broken file's errors row, as DecodeImage gives it: (stage, error_type).
BROKEN = {
    "half.jpg": ("decode", "truncated"),
    "notes.jpg": ("decode", "not_an_image"),
    "empty.jpg": ("decode", "empty"),
    "no-table.jpg": ("decode", "corrupt"),
}
# What DALI leaves to the CPU path: everything but the four plain JPEGs.
LEFT_TO_CPU = {"chelsea.png", "cmyk.jpg", *BROKEN}


def outputs(dofn, inputs: dict[str, bytes]) -> dict[str, tuple]:
    """Runs a decode DoFn as a runner does (setup, process each, finish_bundle, teardown).

    Returns image_id -> ("pixels", (width, height), array) or ("error", (stage, error_type, message)),
    after checking that each input gave exactly one output.
    """
    dofn.setup()
    try:
        found = [out for key, data in inputs.items() for out in dofn.process((key, f"mem://{key}", data))]
        found += list(dofn.finish_bundle())
    finally:
        dofn.teardown()
    by_key = {}
    for out in found:
        tagged = isinstance(out, TaggedOutput)
        value = out.value if tagged else out
        value = value.value if isinstance(value, WindowedValue) else value
        if tagged:
            row = value
            assert row["uri"] == f"mem://{row['image_id']}"
            entry = row["image_id"], ("error", (row["stage"], row["error_type"], row["message"]))
        else:
            (key, uri, width, height), pixels = value
            entry = key, ("pixels", (width, height), pixels)
        assert entry[0] not in by_key, f"two outputs for {entry[0]}"
        by_key[entry[0]] = entry[1]
    assert by_key.keys() == inputs.keys()
    return by_key


def test_a_mixed_batch_gives_one_output_per_input_and_todays_error_rows(mixed):
    # Batches of 4 (prefetch 8 = 2 x --batch_size 4): two full ones and a rest in finish_bundle.
    config = DecodeConfig(prefetch=8)
    got = outputs(GpuDecodeImage(config, dali_device="cpu"), mixed)
    want = outputs(DecodeImage(config), mixed)
    for key, entry in want.items():
        if entry[0] == "error":
            assert got[key] == entry, key  # same stage, error_type and message, from the same sandbox
            continue
        kind, size, pixels = got[key]
        assert (kind, size) == entry[:2], key
        if key in LEFT_TO_CPU:
            np.testing.assert_array_equal(pixels, entry[2])  # decoded by the same CPU path
        else:
            # DALI decodes at full resolution, decode_image in draft mode: within the draft's own
            # tolerance (vgg.preprocess: mean <= 0.75, max <= 48 levels on retina.jpg).
            d = np.abs(pixels.astype(np.int16) - entry[2].astype(np.int16))
            assert d.mean() <= 0.75 and d.max() <= 48, (key, d.mean(), d.max())
    assert {key: entry[1][:2] for key, entry in got.items() if entry[0] == "error"} == BROKEN


def test_only_what_dali_cannot_take_reaches_the_cpu_decoder(mixed):
    seen = []

    def recording_decode(data, **kwargs):
        seen.append(data)
        return decode_image(data, **kwargs)

    config = DecodeConfig(prefetch=8, isolation="none", decode=recording_decode)
    outputs(GpuDecodeImage(config, dali_device="cpu"), mixed)
    assert sorted(key for key, data in mixed.items() if data in seen) == sorted(LEFT_TO_CPU)


@pytest.mark.skipif(bool(gpus()), reason="this machine has a GPU")
def test_a_worker_without_a_gpu_warns_once_and_decodes_as_on_the_cpu(mixed, monkeypatch, caplog):
    monkeypatch.setattr(gpu_decode, "_warned", threading.Event())
    config = DecodeConfig(prefetch=8)
    with caplog.at_level(logging.WARNING, logger=gpu_decode.__name__):
        first = outputs(GpuDecodeImage(config), mixed)
        second = outputs(GpuDecodeImage(config), mixed)  # a second DoFn instance in the same process
    (warning,) = [r.getMessage() for r in caplog.records if r.name == gpu_decode.__name__]
    assert warning.startswith("--decode_device gpu: DALI cannot use a GPU here: ")
    assert warning.endswith(
        "; this worker decodes every image on the CPU, in the sandboxed decoder, as --decode_device cpu does"
    )
    want = outputs(DecodeImage(config), mixed)
    for got in (first, second):
        for key, entry in want.items():
            assert got[key][:2] == entry[:2], key
            if entry[0] == "pixels":
                np.testing.assert_array_equal(got[key][2], entry[2])


def test_decode_config_takes_the_device():
    args = job_parser().parse_known_args([])[0]
    assert DecodeConfig.from_args(args).device == "cpu"
    args = job_parser().parse_known_args(["--decode_device", "gpu"])[0]
    assert DecodeConfig.from_args(args).device == "gpu"
    with pytest.raises(
        ConfigError, match=r"^--decode_device \(device\) must be one of cpu\|gpu\. Received: 'tpu'$"
    ):
        DecodeConfig(device="tpu")
    with pytest.raises(ConfigError, match=r"invalid choice: 'tpu'"):
        job_parser().parse_known_args(["--decode_device", "tpu"])


def test_decode_device_gpu_without_dali_is_one_error_line_at_launch(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if DALI were not installed
    code = run.main(
        ["--input", str(SAMPLES / "*.jpg"), "--output", str(tmp_path / "out"), "--weights", "w.npz",
         "--decode_device", "gpu"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: --decode_device gpu: NVIDIA DALI is not installed here (")
    assert err[0].endswith(
        "install the 'gpu-decode' extra: pip install 'vgg16-beam[gpu-decode]', or use --decode_device cpu"
    )
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written


def label_here(out, *flags) -> dict[str, int]:
    """pipeline.run.run in this process with the fake model; the job's counters."""
    result = run.run(
        [*map(str, flags), "--output", str(out)],
        test_pipeline=TestPipeline(),
        handler=FakeHandler(max_batch_size=4),
        reader=FAST_RETRIES,
    )
    return counters(result)


def test_a_job_with_dali_writes_the_rows_of_the_cpu_job(
    monkeypatch, capsys, npz_path, photo_dir, tmp_path, read_rows
):
    monkeypatch.setattr(gpu_decode, "DALI_DEVICE", "cpu")  # the GPU path, with DALI on this CPU
    inputs = ("--input", f"{SAMPLES}/*", "--input", f"{photo_dir}/*", "--weights", npz_path)
    cpu = label_here(tmp_path / "cpu", *inputs, "--batch_size", "4")
    gpu = label_here(tmp_path / "gpu", *inputs, "--batch_size", "4", "--decode_device", "gpu")
    # samples/: five JPEGs, a PNG and README.md; photo_dir: five photos (one JPEG) and three
    # broken files. DALI takes the six JPEGs; the other nine go through the sandbox.
    assert (gpu.get("decoded_by_dali"), gpu.get("dali_fallbacks")) == (6, 9)
    assert "decoded_by_dali" not in cpu and "dali_fallbacks" not in cpu
    tables = {}
    for name in ("cpu", "gpu"):
        predictions, _ = read_rows(tmp_path / name, "predictions")
        errors, _ = read_rows(tmp_path / name, "errors")
        tables[name] = (
            sorted((r["image_id"], r["uri"], r["width"], r["height"]) for r in predictions),
            sorted((r["image_id"], r["uri"], r["stage"], r["error_type"], r["message"]) for r in errors),
        )
    assert tables["gpu"] == tables["cpu"]
    assert (len(tables["cpu"][0]), len(tables["cpu"][1])) == (11, 4)
