"""Beam RunInference adapter for VGG16: loads the model once per worker process, runs uint8 batches."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference import base as _beam_inference
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline import METRICS_NAMESPACE, ConfigError
from pipeline.job import failpoints
from pipeline.storage import stage_weights
from vgg.architecture import PRECISIONS
from vgg.hardware import precision_warning

log = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model a worker loads and how it batches.

    Every field is checked here, where the config is made (ConfigError, naming the flag).

    Attributes:
        weights: npz or Keras h5 (local or remote), or "imagenet" (--weights).
        sha256: refuse weights with another digest (None: no check).
        precision: one of vgg.architecture.PRECISIONS (--precision).
        jit: compile the model with XLA (--jit).
        min_batch_size, max_batch_size: the bounds of Beam's BatchElements (--min_batch_size,
            --batch_size).
        share_model: one copy per machine for all SDK processes (Beam's large_model).
    """

    weights: str
    sha256: str | None = None
    precision: str = PRECISIONS[0]
    jit: bool = False
    min_batch_size: int = 1
    max_batch_size: int = 32
    share_model: bool = False

    def __post_init__(self):
        if not self.weights:
            raise ConfigError("no weights: pass --weights FILE (npz or Keras h5) or --weights imagenet.")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision must be one of {'|'.join(PRECISIONS)}. Received: {self.precision!r}"
            )
        if self.max_batch_size < 1:
            raise ConfigError(
                "--batch_size (max_batch_size) must be at least 1: the largest inference batch. "
                f"Received: {self.max_batch_size}"
            )
        if not 1 <= self.min_batch_size <= self.max_batch_size:
            raise ConfigError(
                "--min_batch_size must be between 1 and --batch_size; leave it out for full batches. "
                f"Received: min_batch_size={self.min_batch_size}, max_batch_size={self.max_batch_size}"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, sha256: str | None = None) -> ModelConfig:
        """The model of a run, from `python -m pipeline.run`'s parsed options.

        Args:
            args: The parsed options.
            sha256: The launcher's digest of the weights, which workers then insist on.
        """
        return cls(
            weights=args.weights,
            sha256=sha256,
            precision=args.precision,
            jit=args.jit,
            # Full batches unless asked otherwise: faster than Beam's batcher growing from 1.
            min_batch_size=args.batch_size if args.min_batch_size is None else args.min_batch_size,
            max_batch_size=args.batch_size,
            share_model=args.share_model,
        )


class VGG16ModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """Runs `vgg.inference.Predictor` on batches of (224, 224, 3) uint8 arrays.

    RunInference keeps one loaded model per process, shared by all of its threads
    (Beam's `Shared`), and batches with `BatchElements` between the config's sizes. With
    `share_model` one copy is shared by all SDK processes on a machine instead.
    Each result's inference is (probs (1000,), fc7 (4096,)) from the same forward pass;
    the input array is not kept in the result, to keep memory flat.
    """

    def __init__(self, config: ModelConfig):
        # Batching and sharing are given by overriding the two methods below, which every
        # Beam release asks; ModelHandler.__init__ takes them as arguments only in releases
        # after 2.62, the one the Flink job server is built for (docs/flink.md).
        super().__init__()
        self.config = config

    def batch_elements_kwargs(self) -> dict[str, int]:
        return {"min_batch_size": self.config.min_batch_size, "max_batch_size": self.config.max_batch_size}

    def share_model_across_processes(self) -> bool:
        return self.config.share_model

    def load_model(self):
        from vgg.inference import Predictor  # TensorFlow is imported on workers only

        warning = precision_warning(self.config.precision)  # about this worker's own device
        if warning:
            log.warning(warning)
        return Predictor(
            stage_weights(self.config.weights),
            sha256=self.config.sha256,
            precision=self.config.precision,
            jit=self.config.jit,
            max_batch_size=self.config.max_batch_size,
        )

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        failpoints.hit("label")
        probs, fc7 = model(np.stack(batch))
        return [PredictionResult(None, (p, f)) for p, f in zip(probs, fc7)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(a.nbytes for a in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE
