"""The decode step: image bytes -> the model's 224x224 uint8 input, in the sandboxed decoder."""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from pipeline import METRICS_NAMESPACE, ConfigError
from pipeline.contract import ERRORS, error_row
from vgg.dali import DaliUnavailable, import_dali
from vgg.preprocess import RESIZE_MODES, ImageError, decode_image
from vgg.sandbox import DECODE_TIMEOUT_S, DecodeFailed, DecoderCrashed, IsolatedDecoder

log = logging.getLogger(__name__)

# "subprocess": decode in a child process per decoder thread (crashes contained);
# "none": decode in the worker's own process (no per-image overhead, no containment).
ISOLATION_MODES = ("subprocess", "none")
# "cpu": every image through the decoder above; "gpu": JPEGs through NVIDIA DALI on the worker's
# GPU (pipeline.job.gpu_decode), the rest as on "cpu".
DECODE_DEVICES = ("cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How a worker turns image bytes into model input.

    Every field is checked here, where the config is made (ConfigError, naming the flag).

    Attributes:
        resize: one of vgg.preprocess.RESIZE_MODES (--resize).
        isolation: one of ISOLATION_MODES (--decode_isolation).
        timeout_s: longest one isolated decode may take, or None for no limit (--decode_timeout_s,
            where 0 means None).
        threads: decoder threads per DoFn instance, each with its own child when isolated
            (--decode_threads).
        prefetch: images handed to the decoder threads ahead of the model.
        decode: the decoding function (importable by reference; tests swap in others).
        device: one of DECODE_DEVICES (--decode_device); "gpu" needs NVIDIA DALI installed.
    """

    resize: str = RESIZE_MODES[0]
    isolation: str = ISOLATION_MODES[0]
    timeout_s: float | None = DECODE_TIMEOUT_S
    threads: int = 1
    prefetch: int = 32
    decode: Callable = decode_image
    device: str = DECODE_DEVICES[0]

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"--resize must be one of {'|'.join(RESIZE_MODES)}. Received: {self.resize!r}")
        if self.isolation not in ISOLATION_MODES:
            raise ConfigError(
                f"--decode_isolation (isolation) must be one of {'|'.join(ISOLATION_MODES)}. "
                f"Received: {self.isolation!r}"
            )
        if self.timeout_s is not None and self.timeout_s < 0:
            raise ConfigError(
                "--decode_timeout_s (timeout_s) must be at least 0 seconds; 0 (None here) means no limit. "
                f"Received: {self.timeout_s}"
            )
        if self.threads < 1:
            raise ConfigError(f"--decode_threads (threads) must be at least 1. Received: {self.threads}")
        if self.prefetch < 0:
            raise ConfigError(f"prefetch (2 x --batch_size) must be at least 0. Received: {self.prefetch}")
        if self.device not in DECODE_DEVICES:
            raise ConfigError(
                f"--decode_device (device) must be one of {'|'.join(DECODE_DEVICES)}. "
                f"Received: {self.device!r}"
            )
        if self.device == "gpu":
            try:
                import_dali()
            except DaliUnavailable as error:
                raise ConfigError(f"--decode_device gpu: {error}, or use --decode_device cpu") from None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DecodeConfig:
        """How workers decode, from `python -m pipeline.run`'s parsed options.

        They decode up to two batches (2 x --batch_size images) ahead of the model.
        """
        return cls(
            resize=args.resize,
            isolation=args.decode_isolation,
            timeout_s=args.decode_timeout_s or None,
            threads=args.decode_threads,
            prefetch=2 * args.batch_size,
            device=args.decode_device,
        )


def _failed(stage: str):
    return Metrics.counter(METRICS_NAMESPACE, f"failed_{stage}")


class DecodeImage(beam.DoFn):
    """(image_id, uri, bytes) -> ((image_id, uri, width, height), uint8 224x224x3 pixels).

    Only the compact preprocessed array travels on to the model; bad images become
    errors rows with the decoder's error_type. With isolation "subprocess" (the
    default) decoding runs in child processes (vgg.sandbox), so a crash in
    Pillow's native code, or a decode running past timeout_s, becomes one errors row
    ("crashed", "timeout") instead of killing the worker.

    Decoding runs ahead of the model: up to `prefetch` images are handed to `threads`
    decoder threads while the model is busy with the previous batch, so decode CPU
    overlaps inference instead of adding to it. Outputs keep the input order; what is
    still in flight leaves in finish_bundle.
    """

    def __init__(self, config: DecodeConfig):
        self._config = config
        self._pool = None
        self._failed = _failed("decode")
        self._crashes = Metrics.counter(METRICS_NAMESPACE, "decoder_crashes")
        self._decode_ms = Metrics.distribution(METRICS_NAMESPACE, "decode_ms")

    def setup(self):
        self._local = threading.local()
        self._decoders: list[IsolatedDecoder] = []
        self._decoders_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(self._config.threads, thread_name_prefix="decode")
        self._pending: collections.deque = collections.deque()

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for decoder in self._decoders:
            decoder.close()

    def _decoder(self):
        """This thread's decoder: its own child process when isolated."""
        if self._config.isolation == "none":
            return self._config.decode
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            decoder = IsolatedDecoder(self._config.decode, timeout_s=self._config.timeout_s or None)
            self._local.decoder = decoder
            with self._decoders_lock:
                self._decoders.append(decoder)
        return decoder

    def _decode_one(self, element):
        """Runs on a decoder thread; returns a plain result (Beam metrics belong to the DoFn's thread)."""
        key, uri, data = element
        start = time.perf_counter()
        try:
            image = self._decoder()(data, resize=self._config.resize)
        except ImageError as error:
            return "error", error_row(key, uri, "decode", error.error_type, str(error)), None
        except DecoderCrashed as error:
            row = error_row(key, uri, "decode", error.error_type, f"{error.error_type}: {error}")
            return "crashed", row, f"decoder {error.error_type} on {uri}: {error}"
        except Exception as error:  # a decoder bug on one file must not fail the job
            message = str(error) if isinstance(error, DecodeFailed) else f"{type(error).__name__}: {error}"
            return "error", error_row(key, uri, "decode", "decode_error", message), None
        elapsed_ms = int((time.perf_counter() - start) * 1000)
        return "ok", ((key, uri, image.width, image.height), image.pixels), elapsed_ms

    def _outputs(self, result):
        kind, payload, extra = result
        if kind == "ok":
            self._decode_ms.update(extra)
            return payload
        self._failed.inc()
        if kind == "crashed":
            self._crashes.inc()
            log.warning(extra)
        return beam.pvalue.TaggedOutput(ERRORS, payload)

    def process(self, element, windowed=beam.DoFn.WindowedValueParam):  # noqa: B008 (Beam's way)
        if self._pool is None:  # setup() not called (a DoFn used outside Beam)
            self.setup()
        self.submit(element, windowed)
        while len(self._pending) > self._config.prefetch:
            yield self.next_output()

    def finish_bundle(self):
        while self._pending:
            yield self.next_output()

    def submit(self, element, windowed=None) -> None:
        """Hands an input to the decoder threads; `windowed` is the input as Beam holds it (window, time)."""
        self._pending.append((self._pool.submit(self._decode_one, element), windowed))

    def next_output(self):
        """The oldest input's output, in that input's window and at its timestamp."""
        future, windowed = self._pending.popleft()
        return in_window_of(self._outputs(future.result()), windowed)


def in_window_of(output, windowed):
    """An output placed in the window (and at the timestamp) of the input it came from.

    With decoding ahead, the input in hand when an output leaves is another one (in
    finish_bundle there is none), and in a --watch job it may be in another window.
    `windowed` is that input's WindowedValue (None outside Beam: the global window).
    """
    if isinstance(output, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(output.tag, in_window_of(output.value, windowed))
    if not isinstance(windowed, WindowedValue):
        return WindowedValue(output, MIN_TIMESTAMP, [GlobalWindow()])
    return windowed.with_value(output)
