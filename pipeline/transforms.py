"""The job's transforms: read, decode, RunInference, format; every input leaves as one row."""

from __future__ import annotations

import logging
import threading
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipeline.io import ReadError, image_id, read_bytes
from pipeline.model_handler import VGG16ModelHandler
from pipeline.sandbox import DecodeFailed, DecoderCrashed, IsolatedDecoder
from pipeline.schema import error_row, prediction_rows
from vgg.preprocess import ImageError, decode_image

log = logging.getLogger(__name__)

NAMESPACE = "vgg16"
ERRORS = "errors"
# "subprocess": decode in a child process per DoFn instance (crashes contained);
# "none": decode in the worker's own process (no per-image overhead, no containment).
ISOLATION_MODES = ("subprocess", "none")
DECODE_TIMEOUT_S = 60.0


def _failed(stage: str):
    return Metrics.counter(NAMESPACE, f"failed_{stage}")


class ReadImage(beam.DoFn):
    """uri -> (image_id, uri, bytes); unreadable files go to the errors output."""

    def __init__(self, reader=read_bytes):
        self._reader = reader
        self._read = Metrics.counter(NAMESPACE, "images_read")
        self._failed = _failed("read")

    def process(self, uri: str):
        key = image_id(uri)
        try:
            data = self._reader(uri)
        except ReadError as error:
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(key, uri, "read", error.error_type, str(error)))
            return
        except Exception as error:  # a reader bug on one file must not fail the job
            self._failed.inc()
            message = f"{uri}: {type(error).__name__}: {error}"
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(key, uri, "read", "read_error", message))
            return
        self._read.inc()
        yield key, uri, data


class DecodeImage(beam.DoFn):
    """(image_id, uri, bytes) -> ((image_id, uri, width, height), uint8 224x224x3 pixels).

    Only the compact preprocessed array travels on to the model; bad images become
    errors rows with the decoder's error_type. With isolation="subprocess" (the
    default) decoding runs in a child process per DoFn instance (pipeline.sandbox), so
    a crash in Pillow's native code, or a decode running past timeout_s, becomes one
    errors row ("crashed", "timeout") instead of killing the worker.
    """

    def __init__(
        self,
        resize: str,
        *,
        isolation: str = "subprocess",
        timeout_s: float | None = DECODE_TIMEOUT_S,
        decode=decode_image,
    ):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}. Received: isolation={isolation!r}")
        self._resize = resize
        self._isolation = isolation
        self._timeout_s = timeout_s or None
        self._decode_fn = decode
        self._decoder = None
        self._failed = _failed("decode")
        self._crashes = Metrics.counter(NAMESPACE, "decoder_crashes")
        self._decode_ms = Metrics.distribution(NAMESPACE, "decode_ms")

    def setup(self):
        if self._isolation == "subprocess":
            self._decoder = IsolatedDecoder(self._decode_fn, timeout_s=self._timeout_s)
        else:
            self._decoder = self._decode_fn

    def teardown(self):
        if isinstance(self._decoder, IsolatedDecoder):
            self._decoder.close()

    def process(self, element):
        key, uri, data = element
        if self._decoder is None:  # setup() not called (a DoFn used outside Beam)
            self.setup()
        start = time.perf_counter()
        try:
            image = self._decoder(data, resize=self._resize)
        except ImageError as error:
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(
                ERRORS, error_row(key, uri, "decode", error.error_type, str(error))
            )
            return
        except DecoderCrashed as error:
            self._failed.inc()
            self._crashes.inc()
            log.warning("decoder %s on %s: %s", error.error_type, uri, error)
            yield beam.pvalue.TaggedOutput(
                ERRORS, error_row(key, uri, "decode", error.error_type, f"{error.error_type}: {error}")
            )
            return
        except Exception as error:  # a decoder bug on one file must not fail the job
            self._failed.inc()
            message = (
                f"{type(error).__name__}: {error}" if not isinstance(error, DecodeFailed) else str(error)
            )
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(key, uri, "decode", "decode_error", message))
            return
        self._decode_ms.update(int((time.perf_counter() - start) * 1000))
        yield (key, uri, image.width, image.height), image.pixels


class _Progress:
    """Per-process progress line every few seconds (images done, images/s)."""

    def __init__(self, every_s: float = 5.0):
        self._lock = threading.Lock()
        self._every = every_s
        self._start = self._last = None
        self._done = 0

    def add(self, count: int) -> None:
        with self._lock:
            now = time.monotonic()
            if self._start is None:  # the clock starts with the first result, not at import
                self._start = self._last = now
            self._done += count
            if now - self._last >= self._every:
                self._last = now
                rate = self._done / max(now - self._start, 1e-9)
                log.info("progress: %d images labelled in this worker, %.1f images/s", self._done, rate)


_progress = _Progress()


class FormatPredictions(beam.DoFn):
    """(key, PredictionResult) -> a predictions row with top_k labels (and fc7)."""

    def __init__(self, top_k: int, embeddings: bool):
        self._top_k = top_k
        self._embeddings = embeddings
        self._labelled = Metrics.counter(NAMESPACE, "images_labelled")

    def process(self, element):
        key, result = element
        probs, fc7 = result.inference
        (row,) = prediction_rows([key], probs[None], fc7[None] if self._embeddings else None, self._top_k)
        self._labelled.inc()
        _progress.add(1)
        yield row


def failed_batch_rows(failure):
    """A batch RunInference could not run -> one errors row per image in it."""
    batch, (_, error_repr, _) = failure  # Beam's dead letter: (type, repr(error), traceback)
    _failed("inference").inc(len(batch))
    for (key, uri, _, _), _ in batch:
        yield error_row(key, uri, "inference", "inference_error", str(error_repr))


class LabelImages(beam.PTransform):
    """URIs -> {"predictions": rows, "errors": rows}; each URI lands in exactly one of them."""

    def __init__(
        self,
        handler: VGG16ModelHandler,
        *,
        resize: str = "squash",
        top_k: int = 5,
        embeddings: bool = False,
        reader=read_bytes,
        decode_isolation: str = "subprocess",
        decode_timeout_s: float | None = DECODE_TIMEOUT_S,
        decode=decode_image,
    ):
        super().__init__()
        self._handler = handler
        self._resize = resize
        self._top_k = top_k
        self._embeddings = embeddings
        self._reader = reader
        self._decode = DecodeImage(
            resize, isolation=decode_isolation, timeout_s=decode_timeout_s, decode=decode
        )

    def expand(self, uris):
        read = uris | "Read" >> beam.ParDo(ReadImage(self._reader)).with_outputs(ERRORS, main="images")
        decoded = read.images | "Decode" >> beam.ParDo(self._decode).with_outputs(ERRORS, main="pixels")
        results, failed = (
            decoded.pixels
            | "Infer" >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling()
        )
        predictions = results | "Format" >> beam.ParDo(FormatPredictions(self._top_k, self._embeddings))
        inference_errors = failed.failed_inferences | "InferenceErrors" >> beam.FlatMap(failed_batch_rows)
        errors = (read[ERRORS], decoded[ERRORS], inference_errors) | "AllErrors" >> beam.Flatten()
        return {"predictions": predictions, "errors": errors}
