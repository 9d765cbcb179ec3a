"""The decode step with --decode_device gpu: JPEGs in batches through NVIDIA DALI, the rest as on the CPU."""

from __future__ import annotations

import logging
import threading
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import METRICS_NAMESPACE
from pipeline.job.decode import DecodeConfig, DecodeImage, in_window_of
from vgg.dali import DaliDecoder, DaliUnavailable

log = logging.getLogger(__name__)

# Where the DALI pipeline runs. Only the tests change it, to "cpu": the same DoFn, pipeline and
# fallbacks on a machine without a GPU.
DALI_DEVICE = "gpu"

_warned = threading.Event()  # the "no GPU on this worker" warning: once per process


class GpuDecodeImage(beam.DoFn):
    """DecodeImage's contract, with DALI (nvJPEG) decoding the JPEGs it can take on the worker's GPU.

    (image_id, uri, bytes) -> ((image_id, uri, width, height), uint8 224x224x3 pixels), or an
    errors row. Elements are gathered into batches of --batch_size images, which DALI decodes
    and resizes in one run (vgg.dali). Every image DALI does not take (not a JPEG, CMYK,
    truncated, over the pixel limit, one it fails to decode) goes through a DecodeImage with
    the same config, in the sandbox as usual, so it gives exactly the row and error type it
    gives without a GPU. On a worker where DALI finds no GPU, one warning is logged and every
    image goes through that DecodeImage: the job runs as with --decode_device cpu.
    """

    def __init__(self, config: DecodeConfig, *, dali_device: str | None = None):
        self._config = config
        self._dali_device = dali_device
        # Batches the size of the model's: prefetch is two of them (DecodeConfig.from_args).
        self._batch_size = max(1, config.prefetch // 2)
        self._cpu = DecodeImage(config)
        self._dali: DaliDecoder | None = None
        self._buffer: list | None = None
        self._decoded = Metrics.counter(METRICS_NAMESPACE, "decoded_by_dali")
        self._fallbacks = Metrics.counter(METRICS_NAMESPACE, "dali_fallbacks")
        self._batch_ms = Metrics.distribution(METRICS_NAMESPACE, "dali_batch_ms")

    def setup(self):
        self._cpu.setup()
        self._buffer = []
        device = self._dali_device or DALI_DEVICE
        try:
            self._dali = DaliDecoder(
                device=device,
                resize=self._config.resize,
                batch_size=self._batch_size,
                threads=self._config.threads,
            )
        except DaliUnavailable as error:
            self._dali = None
            if not _warned.is_set():
                _warned.set()
                log.warning(
                    "--decode_device gpu: %s; this worker decodes every image on the CPU, in the "
                    "sandboxed decoder, as --decode_device cpu does",
                    error,
                )

    def teardown(self):
        self._cpu.teardown()
        if self._dali is not None:
            self._dali.close()
            self._dali = None

    def process(self, element, windowed=beam.DoFn.WindowedValueParam):  # noqa: B008 (Beam's way)
        if self._buffer is None:  # setup() not called (a DoFn used outside Beam)
            self.setup()
        if self._dali is None:
            yield from self._cpu.process(element, windowed)
            return
        self._buffer.append((element, windowed))
        if len(self._buffer) >= self._batch_size:
            yield from self._flush()

    def finish_bundle(self):
        if self._buffer:
            yield from self._flush()
        yield from self._cpu.finish_bundle()

    def _flush(self):
        """Decodes the gathered batch with DALI; yields its outputs and those of the CPU path for the rest.

        Each output is in its own input's window and at its timestamp (decode.in_window_of).
        """
        batch, self._buffer = self._buffer, []
        start = time.perf_counter()
        try:
            decoded = self._dali([data for (_, _, data), _ in batch])
        except Exception as error:  # a DALI bug must not cost the batch: the CPU path takes it all
            log.warning("DALI failed on a batch of %d images (%s: %s); decoding them on the CPU",
                        len(batch), type(error).__name__, error)  # fmt: skip
            decoded = [None] * len(batch)
        self._batch_ms.update(int((time.perf_counter() - start) * 1000))
        for ((key, uri, data), windowed), image in zip(batch, decoded):
            if image is None:
                self._fallbacks.inc()
                yield from self._cpu.process((key, uri, data), windowed)
            else:
                self._decoded.inc()
                yield in_window_of(((key, uri, image.width, image.height), image.pixels), windowed)
