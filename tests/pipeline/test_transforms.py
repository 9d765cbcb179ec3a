"""The job's transforms on TestPipeline with fakes: every input lands in exactly one output."""

from __future__ import annotations

import hashlib
import io

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline.io import ReadError, image_id
from pipeline.transforms import DecodeImage, LabelImages, ReadImage
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


def test_image_id_is_stable_and_documented():
    # `printf %s gs://b/x.jpg | sha256sum | cut -c1-32` gives the same digits.
    assert image_id("gs://b/x.jpg") == hashlib.sha256(b"gs://b/x.jpg").hexdigest()[:32]
    assert len({image_id(f"/p/{i}.jpg") for i in range(1000)}) == 1000


def test_read_and_decode_route_errors():
    with TestPipeline() as p:
        read = (
            p
            | beam.Create(sorted(FILES) + ["mem://gone.jpg"])
            | beam.ParDo(ReadImage(reader)).with_outputs("errors", main="images")
        )
        decoded = read.images | beam.ParDo(DecodeImage("squash")).with_outputs("errors", main="pixels")
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
        out = (
            p
            | beam.Create(uris)
            | LabelImages(FakeHandler(max_batch_size=2), top_k=3, embeddings=embeddings, reader=reader)
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
        assert_that(out["predictions"] | beam.Map(summary), equal_to(want), label="predictions")
        assert_that(
            out["errors"] | beam.Map(lambda r: (r["uri"], r["image_id"] == image_id(r["uri"]))),
            equal_to([("mem://text.jpg", True), ("mem://empty.png", True), ("mem://gone.jpg", True)]),
            label="errors",
        )


def test_failed_inference_batch_becomes_error_rows():
    # The grey image (pixel value 100) makes its batch raise; max_batch_size=1 keeps
    # the red image in a batch of its own, which must still be labelled.
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(["mem://grey.png", "mem://red.png"])
            | LabelImages(FakeHandler(fail_on=100, max_batch_size=1), reader=reader)
        )
        assert_that(
            out["predictions"] | beam.Map(lambda r: r["uri"]), equal_to(["mem://red.png"]), label="ok"
        )
        assert_that(
            out["errors"] | beam.Map(lambda r: (r["uri"], r["stage"], r["error_type"], r["message"])),
            equal_to(
                [("mem://grey.png", "inference", "inference_error", "RuntimeError('device fell over')")]
            ),
            label="failed",
        )


def test_labels_are_top_k_in_descending_order():
    from pipeline.schema import prediction_rows

    probs = np.zeros((1, 1000), np.float32)
    probs[0, [356, 7, 3]] = [0.5, 0.2, 0.2]
    (row,) = prediction_rows([("id", "u", 10, 20)], probs, None, 3)
    # Ties (7 and 3 at 0.2) go to the lower class index.
    assert [(x["class_index"], x["wnid"], x["label"]) for x in row["labels"]] == [
        (356, "n02441942", "weasel"),
        (3, "n01491361", "tiger_shark"),
        (7, "n01514668", "cock"),
    ]
    assert [x["score"] for x in row["labels"]] == [0.5, pytest.approx(0.2), pytest.approx(0.2)]


def test_beam_keeps_its_memory_metric_without_torch():
    # pipeline.model_handler restores the stdlib `resource` that Beam drops when torch
    # is missing, so RunInference reports the model's memory instead of a bogus warning.
    import resource

    from apache_beam.ml.inference import base

    import pipeline.model_handler  # noqa: F401

    assert base.resource is resource
