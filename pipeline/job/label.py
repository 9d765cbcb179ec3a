"""The labelling step: images -> decode -> RunInference (VGG16) -> rows; every image leaves as one row."""

from __future__ import annotations

import logging
import threading
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipeline import METRICS_NAMESPACE
from pipeline.contract import ERRORS, PREDICTIONS, error_row, prediction_rows
from pipeline.job.decode import DecodeConfig, DecodeImage
from pipeline.job.gpu_decode import GpuDecodeImage
from pipeline.job.model_handler import VGG16ModelHandler

log = logging.getLogger(__name__)


def _failed(stage: str):
    return Metrics.counter(METRICS_NAMESPACE, f"failed_{stage}")


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
        self._labelled = Metrics.counter(METRICS_NAMESPACE, "images_labelled")

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
    """(image_id, uri, bytes) -> {"predictions": rows, "errors": rows}; each image lands in one of them."""

    def __init__(self, handler: VGG16ModelHandler, decode: DecodeConfig, *, top_k: int, embeddings: bool):
        super().__init__()
        self._handler = handler
        self._decode = decode
        self._top_k = top_k
        self._embeddings = embeddings

    def expand(self, images):
        decoder = (GpuDecodeImage if self._decode.device == "gpu" else DecodeImage)(self._decode)
        decoded = images | "Decode" >> beam.ParDo(decoder).with_outputs(ERRORS, main="pixels")
        results, failed = (
            decoded.pixels
            | "Infer" >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling()
        )
        predictions = results | "Format" >> beam.ParDo(FormatPredictions(self._top_k, self._embeddings))
        inference_errors = failed.failed_inferences | "InferenceErrors" >> beam.FlatMap(failed_batch_rows)
        errors = (decoded[ERRORS], inference_errors) | "AllErrors" >> beam.Flatten()
        return {PREDICTIONS: predictions, ERRORS: errors}
