"""VGG16 as a Keras functional model: uint8 RGB in, softmax and fc7 out of one forward pass."""

from __future__ import annotations

from collections.abc import Iterable

import keras
import numpy as np

from vgg.architecture import CONV_BLOCKS, FC7_DIM, IMAGE_SIZE, IMAGENET_MEAN_RGB, NUM_CLASSES
from vgg.weights import WeightsInfo, stream_weights

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
INPUT_DTYPES = ("uint8", "float32")


class _LayerStream:
    """Hands (layer, kernel, bias) from a weights iterator to the layers as Keras builds them.

    Keras builds layers in order and each one's kernel before its bias, so the variables
    are created straight from the file's arrays: no zero or random values first, and
    only one layer's arrays in memory at a time (peak RSS 1.8 GB instead of 2.8 GB).
    """

    def __init__(self, layers: Iterable[tuple[str, np.ndarray, np.ndarray]]):
        self._layers = iter(layers)
        self._bias: tuple[str, np.ndarray] | None = None

    def initializers(self, name: str) -> dict:
        return {
            "kernel_initializer": _FromStream(self, name, "kernel"),
            "bias_initializer": _FromStream(self, name, "bias"),
        }

    def take(self, name: str, part: str) -> np.ndarray:
        if part == "kernel":
            layer, kernel, bias = next(self._layers)
            if layer != name:
                raise ValueError(f"weights arrived for layer {layer!r} while building {name!r}")
            self._bias = (name, bias)
            return kernel
        pending, self._bias = self._bias, None
        if pending is None or pending[0] != name:
            raise ValueError(f"no bias pending for layer {name!r}")
        return pending[1]


class _FromStream(keras.initializers.Initializer):
    def __init__(self, stream: _LayerStream, name: str, part: str):
        self._stream, self._name, self._part = stream, name, part

    def __call__(self, shape, dtype=None):
        value = self._stream.take(self._name, self._part)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{self._name} {self._part}: shape {value.shape}, layer needs {tuple(shape)}")
        return keras.ops.convert_to_tensor(value, dtype=dtype)


@keras.saving.register_keras_serializable(package="vgg")
class Preprocess(keras.layers.Layer):
    """Casts RGB pixels to float and subtracts the ImageNet mean (the seed's in-graph step)."""

    def __init__(self, mean=IMAGENET_MEAN_RGB, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)

    def call(self, images):
        # Subtract in float32 first: bfloat16 cannot hold 123.68 exactly, and the
        # difference from float32 would then depend on the pixel value.
        centred = keras.ops.cast(images, "float32") - keras.ops.convert_to_tensor(
            np.asarray(self.mean, np.float32)
        )
        return keras.ops.cast(centred, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean}


def build_vgg16(
    *,
    precision: str = "float32",
    input_dtype: str = "uint8",
    weights: Iterable[tuple[str, np.ndarray, np.ndarray]] | None = None,
) -> keras.Model:
    """Builds VGG16, with weights from `weights` or all zeros (see `load_vgg16` for files).

    Args:
      precision: "float32", "bfloat16" or "float16". The reduced ones are Keras
        mixed-precision policies (weights float32, compute reduced); the softmax and
        fc7 outputs are float32 either way.
      input_dtype: "uint8" (4x less data to move to a GPU than float32) or
        "float32" for float pixels in 0..255. Keras casts whatever it is given to
        this dtype, so float pixels need a float32 model.
      weights: (layer, kernel, bias) in `LAYER_NAMES` order, as `vgg.weight_formats`'
        iter_npz / iter_h5 yield them; None for zeros.

    Returns:
      A functional model mapping (N, 224, 224, 3) RGB pixels to
      {"probs": (N, 1000) softmax, "fc7": (N, 4096) post-ReLU activations}.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}. Received: precision={precision!r}")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}. Received: input_dtype={input_dtype!r}")
    policy = keras.DTypePolicy(PRECISIONS[precision])
    layers = keras.layers
    if weights is None:
        init = lambda name: {"kernel_initializer": "zeros", "bias_initializer": "zeros"}  # noqa: E731
    else:
        init = _LayerStream(weights).initializers

    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=input_dtype, name="images")
    x = Preprocess(name="preprocess", dtype=policy)(images)
    for index, block in enumerate(CONV_BLOCKS, start=1):
        for name, filters in block:
            x = layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=name, dtype=policy, **init(name)
            )(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"pool{index}", dtype=policy)(x)
    x = layers.Flatten(name="flatten", dtype=policy)(x)
    x = layers.Dense(4096, activation="relu", name="fc6", dtype=policy, **init("fc6"))(x)
    fc7 = layers.Dense(FC7_DIM, activation="relu", name="fc7", dtype=policy, **init("fc7"))(x)
    logits = layers.Dense(NUM_CLASSES, name="fc8", dtype=policy, **init("fc8"))(fc7)
    probs = layers.Activation("softmax", name="prob", dtype="float32")(logits)
    fc7_out = layers.Activation("linear", name="fc7_float32", dtype="float32")(fc7)
    return keras.Model(images, {"probs": probs, "fc7": fc7_out}, name="vgg16")


def load_vgg16(
    source: str, *, sha256: str | None = None, precision: str = "float32", input_dtype: str = "uint8"
) -> tuple[keras.Model, WeightsInfo]:
    """Builds VGG16 straight from a weights file (path or "imagenet"), checked in full first."""
    layers, info = stream_weights(source, sha256=sha256)
    return build_vgg16(precision=precision, input_dtype=input_dtype, weights=layers), info
