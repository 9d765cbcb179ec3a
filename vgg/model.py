"""VGG16 as a Keras functional model: uint8 RGB in, softmax and fc7 out of one forward pass."""

from __future__ import annotations

import keras
import numpy as np

from vgg.architecture import CONV_BLOCKS, FC7_DIM, IMAGE_SIZE, IMAGENET_MEAN_RGB, NUM_CLASSES

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
INPUT_DTYPES = ("uint8", "float32")
# Variables start at zero: weights are always loaded afterwards, and random initialisers
# cost seconds and leave ~0.8 GB of allocator garbage behind for a 138M-parameter model.
_ZEROS = {"kernel_initializer": "zeros", "bias_initializer": "zeros"}


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


def build_vgg16(*, precision: str = "float32", input_dtype: str = "uint8") -> keras.Model:
    """Builds VGG16 with all-zero weights; load real ones with `vgg.weights.load_weights`.

    Args:
      precision: "float32", "bfloat16" or "float16". The reduced ones are Keras
        mixed-precision policies (weights float32, compute reduced); the softmax and
        fc7 outputs are float32 either way.
      input_dtype: "uint8" (4x less data to move to a GPU than float32) or
        "float32" for float pixels in 0..255. Keras casts whatever it is given to
        this dtype, so float pixels need a float32 model.

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

    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=input_dtype, name="images")
    x = Preprocess(name="preprocess", dtype=policy)(images)
    for index, block in enumerate(CONV_BLOCKS, start=1):
        for name, filters in block:
            x = layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=name, dtype=policy, **_ZEROS
            )(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"pool{index}", dtype=policy)(x)
    x = layers.Flatten(name="flatten", dtype=policy)(x)
    x = layers.Dense(4096, activation="relu", name="fc6", dtype=policy, **_ZEROS)(x)
    fc7 = layers.Dense(FC7_DIM, activation="relu", name="fc7", dtype=policy, **_ZEROS)(x)
    logits = layers.Dense(NUM_CLASSES, name="fc8", dtype=policy, **_ZEROS)(fc7)
    probs = layers.Activation("softmax", name="prob", dtype="float32")(logits)
    fc7_out = layers.Activation("linear", name="fc7_float32", dtype="float32")(fc7)
    return keras.Model(images, {"probs": probs, "fc7": fc7_out}, name="vgg16")
