"""Beam RunInference adapter for VGG16: loads the model once per worker process, runs uint8 batches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference import base as _beam_inference
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline.io import stage_weights

if getattr(_beam_inference, "resource", None) is None:
    # Beam imports the stdlib `resource` in the same try-block as its ModelManager, which
    # needs torch; without torch it drops `resource` too, loses RunInference's model
    # memory metric and logs "Resource module is not available for current platform"
    # on every model load. The module is there on every POSIX system: give it back.
    try:
        import resource as _resource

        _beam_inference.resource = _resource
    except ImportError:  # Windows: Beam's own fallback applies
        pass


class VGG16ModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """Runs `vgg.inference.Predictor` on batches of (224, 224, 3) uint8 arrays.

    RunInference keeps one loaded model per process, shared by all of its threads
    (Beam's `Shared`), and batches with `BatchElements` between the given sizes. With
    `large_model=True` one copy is shared by all SDK processes on a machine instead.
    Each result's inference is (probs (1000,), fc7 (4096,)) from the same forward pass;
    the input array is not kept in the result, to keep memory flat.
    """

    def __init__(
        self,
        weights: str,
        *,
        sha256: str | None = None,
        precision: str = "float32",
        jit: bool = False,
        min_batch_size: int = 1,
        max_batch_size: int = 32,
        large_model: bool = False,
    ):
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            large_model=large_model,
        )
        self._weights = weights
        self._sha256 = sha256
        self._precision = precision
        self._jit = jit
        self._max_batch_size = max_batch_size

    def load_model(self):
        from vgg.inference import Predictor  # TensorFlow is imported on workers only

        return Predictor(
            stage_weights(self._weights),
            sha256=self._sha256,
            precision=self._precision,
            jit=self._jit,
            max_batch_size=self._max_batch_size,
        )

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        probs, fc7 = model(np.stack(batch))
        return [PredictionResult(None, (p, f)) for p, f in zip(probs, fc7)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(a.nbytes for a in batch)

    def get_metrics_namespace(self) -> str:
        return "vgg16"
