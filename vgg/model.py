"""VGG16 as a Keras functional model: uint8 RGB in, softmax and fc7 out of one forward pass."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

import numpy as np

from vgg._tensorflow import keras, tf
from vgg.architecture import (
    CONV_BLOCKS,
    DENSE_LAYERS,
    FC7_DIM,
    IMAGE_SIZE,
    IMAGENET_MEAN_RGB,
    NUM_CLASSES,
    PRECISIONS,
)
from vgg.weight_formats import Layer, RowBlocks
from vgg.weights import WeightsInfo, stream_weights

FLOAT16_MAX = 65504.0
INPUT_DTYPES = ("uint8", "float32")


# Blocks of this size are copied into a variable at a time: 16 MB keeps the file's side of
# loading small next to the 528 MiB of variables, and the copies no slower than whole arrays.
BLOCK_BYTES = 16 * 2**20


Layers = Iterable[Layer]


def fill_weights(model: keras.Model, layers: Layers) -> None:
    """Copies (layer, kernel, bias) into the model's variables in place, by layer name.

    Kernels may be `RowBlocks` (as `iter_npz(..., block_bytes=...)` yields fc6), so that
    loading holds the variables plus one block, not the variables plus whole arrays and
    their tensor copies (CHANGELOG.md says what that saved).
    """
    for name, kernel, bias in layers:
        layer = model.get_layer(name)
        for variable, value in ((layer.kernel, kernel), (layer.bias, bias)):
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"{name}: weights of shape {tuple(value.shape)}, layer needs {tuple(variable.shape)}"
                )
            blocks = value if isinstance(value, RowBlocks) else [(0, value)]
            for start, block in blocks:
                _assign_rows(variable, start, block)
            # A slice assignment leaves the variable in TensorFlow's copy-on-read mode, in
            # which every read copies the whole buffer (fc6: 411 MB per forward pass).
            tf.raw_ops.DisableCopyOnRead(resource=variable.value.handle)


def _assign_rows(variable: keras.Variable, start: int, block: np.ndarray) -> None:
    if variable.dtype == "float16" and block.size and np.abs(block).max() > FLOAT16_MAX:
        raise ValueError(
            f"{variable.path}: weights up to {np.abs(block).max():.4g}, beyond float16's "
            f"{FLOAT16_MAX:g}; use precision='bfloat16' or 'float32' for these weights"
        )
    # Writes into the variable's own buffer. `variable[a:b].assign` would first read the
    # variable, and that read makes TensorFlow copy the whole buffer before writing.
    stop = [start + len(block), *variable.shape[1:]]
    tf.raw_ops.ResourceStridedSliceAssign(
        ref=variable.value.handle,
        begin=[start] + [0] * (len(stop) - 1),
        end=stop,
        strides=[1] * len(stop),
        value=tf.convert_to_tensor(block, dtype=variable.dtype),
    )


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
    precision: str = PRECISIONS[0],
    input_dtype: str = "uint8",
    weights: Layers | None = None,
) -> keras.Model:
    """Builds VGG16, with weights from `weights` or all zeros (see `load_vgg16` for files).

    Args:
      precision: one of `vgg.architecture.PRECISIONS`: "float32" (the default),
        "bfloat16" or "float16". The reduced ones hold the weights and compute in that
        type, which gives exactly what Keras' mixed_bfloat16 / mixed_float16 policies
        give (they cast the weights on each use); the softmax and fc7 outputs are
        float32 either way.
      input_dtype: "uint8" (4x less data to move to a GPU than float32) or
        "float32" for float pixels in 0..255. Keras casts whatever it is given to
        this dtype, so float pixels need a float32 model.
      weights: (layer, kernel, bias), as each of `vgg.weight_formats.FORMATS`
        yields them; None for zeros. The variables are created as zeros (TensorFlow
        adopts the zeros tensor, so that costs no copy) and the weights are then
        copied into them in place (`fill_weights`).

    Returns:
      A functional model mapping (N, 224, 224, 3) RGB pixels to
      {"probs": (N, 1000) softmax, "fc7": (N, 4096) post-ReLU activations}.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}. Received: precision={precision!r}")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}. Received: input_dtype={input_dtype!r}")
    # The precision is the Keras dtype policy itself. Inference never updates the weights,
    # so the reduced precisions store them reduced too: Keras' mixed_* policies would keep
    # float32 variables and cast every one of them on every forward pass, to the same values
    # (outputs are bit-identical, tests/vgg/test_model.py), for 277 MB more memory and ~2%
    # less speed.
    policy = keras.DTypePolicy(precision)
    layers = keras.layers
    zeros = {"kernel_initializer": "zeros", "bias_initializer": "zeros"}

    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=input_dtype, name="images")
    x = Preprocess(name="preprocess", dtype=policy)(images)
    for index, block in enumerate(CONV_BLOCKS, start=1):
        for name, filters in block:
            x = layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=name, dtype=policy, **zeros
            )(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"pool{index}", dtype=policy)(x)
    x = layers.Flatten(name="flatten", dtype=policy)(x)
    fc6_units = dict(DENSE_LAYERS)["fc6"]
    x = layers.Dense(fc6_units, activation="relu", name="fc6", dtype=policy, **zeros)(x)
    fc7 = layers.Dense(FC7_DIM, activation="relu", name="fc7", dtype=policy, **zeros)(x)
    logits = layers.Dense(NUM_CLASSES, name="fc8", dtype=policy, **zeros)(fc7)
    probs = layers.Activation("softmax", name="prob", dtype="float32")(logits)
    fc7_out = layers.Activation("linear", name="fc7_float32", dtype="float32")(fc7)
    model = keras.Model(images, {"probs": probs, "fc7": fc7_out}, name="vgg16")
    if weights is not None:
        fill_weights(model, weights)
    return model


def split_model(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(features, head) of a model from `build_vgg16`, sharing its layers and weights.

    features maps images to the flattened pool5 output (the convolutions: almost all of the
    work and all of the large activations); head maps that to the model's outputs (the dense
    layers: almost all of the weights). head(features(x)) is model(x), layer for layer.
    """
    flat = model.get_layer("flatten").output
    features = keras.Model(model.input, flat, name="vgg16_features")
    x = head_input = keras.Input(flat.shape[1:], dtype=flat.dtype, name="features")
    for name, _ in DENSE_LAYERS[:-1]:
        x = model.get_layer(name)(x)
    probs = model.get_layer("prob")(model.get_layer(DENSE_LAYERS[-1][0])(x))
    outputs = {"probs": probs, "fc7": model.get_layer("fc7_float32")(x)}
    return features, keras.Model(head_input, outputs, name="vgg16_head")


def load_vgg16(
    source: str, *, sha256: str | None = None, precision: str = PRECISIONS[0], input_dtype: str = "uint8"
) -> tuple[keras.Model, WeightsInfo]:
    """Builds VGG16 straight from a weights file (path or "imagenet"), checked in full first."""
    layers, info = stream_weights(source, sha256=sha256, block_bytes=BLOCK_BYTES)
    model = build_vgg16(precision=precision, input_dtype=input_dtype, weights=layers)
    release_freed_memory()
    return model, info


def release_freed_memory() -> None:
    """Hands memory that malloc keeps after frees back to the system (glibc's malloc_trim).

    Loading frees one BLOCK_BYTES block after another; glibc keeps such blocks for reuse
    (its mmap threshold rises to the size of the first one freed), which a worker would hold
    for the rest of its life. Elsewhere than glibc this does nothing.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc (musl, macOS): nothing to trim this way
        pass
