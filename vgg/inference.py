"""A loaded VGG16 ready to run batches: device set-up, one traced graph, out-of-memory back-off."""

from __future__ import annotations

import logging
import subprocess
import threading

import numpy as np

from vgg._tensorflow import tf
from vgg.architecture import CPU_CONV_BATCH, FC7_DIM, IMAGE_SIZE, NUM_CLASSES, PRECISIONS
from vgg.model import load_vgg16, split_model

log = logging.getLogger(__name__)

_configured = False
_configure_lock = threading.Lock()


def configure_devices() -> str:
    """Turns on GPU memory growth (before TF touches a GPU) and says what the model runs on.

    Growth matters because TF otherwise takes the whole GPU for the first model; with
    several SDK processes per VM that would starve all but one. Returns a description.
    """
    global _configured
    with _configure_lock:
        gpus = tf.config.list_physical_devices("GPU")
        if not _configured:
            for gpu in gpus:
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError:  # already initialised by someone else: keep going
                    pass
            _configured = True
        if not gpus:
            return "CPU (no GPU visible to TensorFlow)"
        memory = _gpu_memory_mib()
        parts = []
        for index, gpu in enumerate(gpus):
            name = tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            total = f", {memory[index]} MiB" if index < len(memory) else ""
            parts.append(f"{gpu.name} ({name}{total})")
        return "GPU: " + "; ".join(parts)


def _gpu_memory_mib() -> list[int]:
    """Total memory per GPU from nvidia-smi; TensorFlow itself does not report it."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return [int(line) for line in out.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


class Predictor:
    """VGG16 with weights loaded, mapping uint8 RGB batches to (probs, fc7).

    Thread-safe: one instance per process serves every thread (TensorFlow runs
    concurrent calls of one graph safely), so a worker holds one copy of the weights.

    Args:
      weights: a weights file (npz or Keras h5) or "imagenet", as `vgg.model.load_vgg16` takes.
      precision: one of `vgg.architecture.PRECISIONS`: "float32" (default), "bfloat16"
        or "float16".
      sha256: optional expected sha256 of the weights file.
      jit: compile with XLA.
      max_batch_size: largest batch sent to the device at once; halved and remembered
        whenever the device runs out of memory.
      conv_batch: images convolved at once within a batch (the dense layers always see
        the whole batch): a positive int, None for the whole batch, or "auto" (the
        default): CPU_CONV_BATCH on a CPU, the whole batch on a GPU or with jit. Outputs
        do not depend on it; memory does.
    """

    def __init__(
        self,
        weights: str,
        *,
        precision: str = PRECISIONS[0],
        sha256: str | None = None,
        jit: bool = False,
        max_batch_size: int | None = None,
        conv_batch: int | str | None = "auto",
    ):
        self.device = configure_devices()
        if conv_batch == "auto":
            # XLA (jit) compiles the whole batch as one program, the loop below included, and
            # aborts the process on it: XLA's models convolve the whole batch at once.
            conv_batch = None if jit or self.device.startswith("GPU") else CPU_CONV_BATCH
        elif jit and conv_batch is not None:
            raise ValueError(f"conv_batch cannot be combined with jit. Received: conv_batch={conv_batch!r}")
        if conv_batch is not None and (isinstance(conv_batch, bool) or not isinstance(conv_batch, int)
                                       or conv_batch < 1):  # fmt: skip
            raise ValueError(f"conv_batch must be a positive int, 'auto' or None. Received: {conv_batch!r}")
        self.precision = precision
        self.conv_batch = conv_batch
        self.model, self.weights = load_vgg16(weights, sha256=sha256, precision=precision)
        self.max_batch_size = max_batch_size
        if conv_batch is None:
            forward = self._whole
        else:
            self._features, self._head = split_model(self.model)
            forward = self._in_slices
        self._forward = tf.function(
            forward,
            input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)],
            jit_compile=jit,
        )
        log.info(
            "VGG16 ready on %s: weights %s (sha256 %s%s), precision %s, convolutions %s",
            self.device,
            self.weights.name,
            self.weights.sha256[:12],
            ", UNTRAINED" if self.weights.untrained else "",
            precision,
            "on the whole batch" if conv_batch is None else f"{conv_batch} images at a time",
        )

    def _whole(self, images):
        return self.model(images, training=False)

    def _in_slices(self, images):
        # The convolutions run conv_batch images at a time, one slice after the other
        # (parallel_iterations=1: never two slices' activations at once), and the dense
        # layers once on the whole batch: fc6's 411 MB of weights are read once per batch.
        size = tf.shape(images)[0]
        step = self.conv_batch
        count = (size + step - 1) // step
        features = tf.TensorArray(self._features.output.dtype, size=count, infer_shape=False)

        def body(index, features):
            sliced = images[index * step : (index + 1) * step]
            return index + 1, features.write(index, self._features(sliced, training=False))

        _, features = tf.while_loop(
            lambda index, _: index < count, body, (tf.constant(0), features), parallel_iterations=1
        )
        flat = tf.ensure_shape(features.concat(), [None, self._features.output.shape[-1]])
        return self._head(flat, training=False)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Runs a (N, 224, 224, 3) uint8 batch; returns float32 (N, 1000) and (N, 4096)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(
                f"images must have shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3). Received: shape={images.shape}"
            )
        if images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 RGB (vgg.preprocess gives that). Received: dtype={images.dtype}"
            )
        probs, fc7, start = [], [], 0
        while start < len(images):
            size = len(images) - start
            if self.max_batch_size:
                size = min(size, self.max_batch_size)
            try:
                out = self._forward(images[start : start + size])
            except tf.errors.ResourceExhaustedError:
                if size == 1:
                    raise
                self.max_batch_size = max(1, size // 2)
                log.warning(
                    "out of device memory at batch %d; capping batches at %d", size, self.max_batch_size
                )
                continue
            probs.append(out["probs"].numpy())
            fc7.append(out["fc7"].numpy())
            start += size
        if not probs:
            return np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0, FC7_DIM), np.float32)
        return np.concatenate(probs), np.concatenate(fc7)
