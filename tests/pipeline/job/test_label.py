"""The job's transforms on TestPipeline with fakes: every input lands in exactly one output."""

from __future__ import annotations

import io

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline import ConfigError
from pipeline.contract import image_id
from pipeline.job.decode import DecodeConfig, DecodeImage
from pipeline.job.label import LabelImages
from pipeline.job.options import job_parser
from pipeline.job.read.files import ReadImage, ReadImages
from pipeline.storage import ReadError
from tests.pipeline.fakes import FakeHandler


def png(color, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


FILES = {
    "mem://grey.png": png((100, 100, 100)),  # mean 100 -> FakeModel class 100
    "mem://red.png": png((255, 0, 0), size=(64, 48)),  # mean 85
    "mem://text.jpg": b"hello, not an image",
    "mem://empty.png": b"",
}


def reader(uri: str) -> bytes:
    if uri not in FILES:
        raise ReadError("not_found", f"{uri}: no such file")
    return FILES[uri]


def label_files(uris, handler, **options):
    """URIs -> ReadImages -> LabelImages, every errors row in one collection (as pipeline.run wires them)."""
    read = uris | ReadImages(reader)
    out = read["images"] | LabelImages(handler, options.pop("decode", DecodeConfig()), **options)
    return out["predictions"], (read["errors"], out["errors"]) | "AllErrors" >> beam.Flatten()


def test_read_and_decode_route_errors():
    with TestPipeline() as p:
        read = (
            p
            | beam.Create(sorted(FILES) + ["mem://gone.jpg"])
            | beam.ParDo(ReadImage(reader)).with_outputs("errors", main="images")
        )
        decoded = read.images | beam.ParDo(DecodeImage(DecodeConfig())).with_outputs("errors", main="pixels")
        assert_that(
            read.errors | "ReadKinds" >> beam.Map(lambda r: (r["uri"], r["stage"], r["error_type"])),
            equal_to([("mem://gone.jpg", "read", "not_found")]),
            label="read errors",
        )
        assert_that(
            decoded.errors | "DecodeKinds" >> beam.Map(lambda r: (r["uri"], r["stage"], r["error_type"])),
            equal_to([("mem://text.jpg", "decode", "not_an_image"), ("mem://empty.png", "decode", "empty")]),
            label="decode errors",
        )
        assert_that(
            decoded.pixels
            | beam.Map(lambda kv: (kv[0][1], kv[0][2], kv[0][3], kv[1].shape, kv[1].dtype.name)),
            equal_to(
                [
                    ("mem://grey.png", 40, 30, (224, 224, 3), "uint8"),
                    ("mem://red.png", 64, 48, (224, 224, 3), "uint8"),
                ]
            ),
            label="pixels",
        )


@pytest.mark.parametrize("embeddings", [False, True])
def test_label_images_accounts_for_every_input(embeddings):
    uris = [*sorted(FILES), "mem://gone.jpg"]
    with TestPipeline() as p:
        predictions, errors = label_files(
            p | beam.Create(uris), FakeHandler(max_batch_size=2), top_k=3, embeddings=embeddings
        )

        def summary(row):
            first = row["labels"][0]
            fc7 = row.get("fc7")
            return (
                row["uri"],
                first["class_index"],
                first["score"],
                len(row["labels"]),
                None if fc7 is None else float(fc7[0]),
            )

        # grey: every pixel 100 -> class 100, score 1.0; fc7[0] is the red mean 100.
        # red: (255+0+0)/3 = 85 -> class 85; fc7[0] = 255.
        want = [
            ("mem://grey.png", 100, 1.0, 3, 100.0 if embeddings else None),
            ("mem://red.png", 85, 1.0, 3, 255.0 if embeddings else None),
        ]
        assert_that(predictions | beam.Map(summary), equal_to(want), label="predictions")
        assert_that(
            errors | beam.Map(lambda r: (r["uri"], r["image_id"] == image_id(r["uri"]))),
            equal_to([("mem://text.jpg", True), ("mem://empty.png", True), ("mem://gone.jpg", True)]),
            label="errors",
        )


def test_failed_inference_batch_becomes_error_rows():
    # The grey image (pixel value 100) makes its batch raise; max_batch_size=1 keeps
    # the red image in a batch of its own, which must still be labelled.
    with TestPipeline() as p:
        predictions, errors = label_files(
            p | beam.Create(["mem://grey.png", "mem://red.png"]),
            FakeHandler(fail_on=100, max_batch_size=1),
            top_k=5,
            embeddings=False,
        )
        assert_that(predictions | beam.Map(lambda r: r["uri"]), equal_to(["mem://red.png"]), label="ok")
        assert_that(
            errors | beam.Map(lambda r: (r["uri"], r["stage"], r["error_type"], r["message"])),
            equal_to(
                [("mem://grey.png", "inference", "inference_error", "RuntimeError('device fell over')")]
            ),
            label="failed",
        )


def test_decode_config_from_args():
    args = job_parser().parse_known_args(
        ["--batch_size", "8", "--decode_threads", "3", "--resize", "center_crop"]
    )[0]
    # Two batches ahead of the model; the default 60 s timeout.
    assert DecodeConfig.from_args(args) == DecodeConfig(
        resize="center_crop", isolation="subprocess", timeout_s=60.0, threads=3, prefetch=16
    )
    args.decode_timeout_s = 0.0
    assert DecodeConfig.from_args(args).timeout_s is None  # 0 on the command line: no limit


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"resize": "stretch"}, "--resize must be one of squash|center_crop. Received: 'stretch'"),
        (
            {"isolation": "thread"},
            "--decode_isolation (isolation) must be one of subprocess|none. Received: 'thread'",
        ),
        ({"timeout_s": -1.0}, "--decode_timeout_s (timeout_s) must be at least 0 seconds"),
        ({"threads": 0}, "--decode_threads (threads) must be at least 1. Received: 0"),
        ({"prefetch": -2}, "prefetch (2 x --batch_size) must be at least 0. Received: -2"),
    ],
)
def test_decode_config_checks_its_own_fields(fields, message):
    with pytest.raises(ConfigError) as info:
        DecodeConfig(**fields)
    assert str(info.value).startswith(message)
