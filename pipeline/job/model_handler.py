"""Beam RunInference adapter for VGG16: loads the model once per worker process, runs uint8 batches."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
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

# Newer Beam releases (2.77 among them) take batching and sharing as ModelHandler's own
# keyword arguments (large_model, model_copies, min/max_batch_size); 2.62, the release of the
# local Flink job server (docs/flink.md), asks the handler's methods instead. Remove the
# older path when setup.py's range no longer includes 2.62.
BEAM_HANDLER_TAKES_SHARING = "model_copies" in inspect.signature(ModelHandler.__init__).parameters

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
        model_copies: this many copies per machine, shared by all SDK processes (Beam's
            model_copies; None: one per process, or one per machine with share_model).
        conv_batch: images convolved at once within a batch (--conv_batch; None: the
            Predictor's "auto", vgg.inference.CPU_CONV_BATCH on a CPU, the whole batch on a GPU).
    """

    weights: str
    sha256: str | None = None
    precision: str = PRECISIONS[0]
    jit: bool = False
    min_batch_size: int = 1
    max_batch_size: int = 32
    share_model: bool = False
    model_copies: int | None = None
    conv_batch: int | None = None

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
        if self.conv_batch is not None and self.conv_batch < 1:
            raise ConfigError(
                "--conv_batch must be at least 1: the images convolved at once; leave it out for the "
                f"device's default. Received: {self.conv_batch}"
            )
        if self.conv_batch is not None and self.jit:
            raise ConfigError(
                "--conv_batch cannot be combined with --jit: XLA convolves the whole batch at once. "
                f"Received: --conv_batch {self.conv_batch} --jit"
            )
        if self.model_copies is not None and self.model_copies < 1:
            raise ConfigError(
                "--model_copies must be at least 1: the model copies per machine, shared by its SDK "
                f"processes; leave it out for one copy per process. Received: {self.model_copies}"
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
            model_copies=args.model_copies,
            conv_batch=args.conv_batch,
        )


class VGG16ModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """Runs `vgg.inference.Predictor` on batches of (224, 224, 3) uint8 arrays.

    RunInference keeps one loaded model per process, shared by all of its threads
    (Beam's `Shared`), and batches with `BatchElements` between the config's sizes. With
    `share_model` one copy is shared by all SDK processes on a machine instead, with
    `model_copies` that many (Beam's `large_model` and `model_copies`).
    Each result's inference is (probs (1000,), fc7 (4096,)) from the same forward pass;
    the input array is not kept in the result, to keep memory flat.
    """

    def __init__(self, config: ModelConfig):
        if BEAM_HANDLER_TAKES_SHARING:
            super().__init__(
                min_batch_size=config.min_batch_size,
                max_batch_size=config.max_batch_size,
                large_model=config.share_model,
                model_copies=config.model_copies,
            )
        else:
            super().__init__()
        self.config = config

    if not BEAM_HANDLER_TAKES_SHARING:
        # Beam 2.62 reads batching and sharing only from these methods (the same answers as
        # newer releases give from the keyword arguments above).

        def batch_elements_kwargs(self) -> dict[str, int]:
            config = self.config
            return {"min_batch_size": config.min_batch_size, "max_batch_size": config.max_batch_size}

        def share_model_across_processes(self) -> bool:
            return self.config.share_model or self.config.model_copies is not None

        def model_copies(self) -> int:
            return self.config.model_copies or 1

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
            conv_batch="auto" if self.config.conv_batch is None else self.config.conv_batch,
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
