"""VGG16's shape as data: layer names, weight shapes, input size and mean (no TensorFlow import)."""

from __future__ import annotations

IMAGE_SIZE = 224
NUM_CLASSES = 1000
FC7_DIM = 4096
# Compute precisions the model supports, the default first.
PRECISIONS = ("float32", "bfloat16", "float16")

# The ImageNet mean in RGB order, subtracted inside the graph as the 2016 seed did.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)

# (layer name, output channels) per block; the names are the original network's and the
# contract that weight loading and feature extraction rely on.
CONV_BLOCKS: tuple[tuple[tuple[str, int], ...], ...] = (
    (("conv1_1", 64), ("conv1_2", 64)),
    (("conv2_1", 128), ("conv2_2", 128)),
    (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
    (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
    (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)),
)
DENSE_LAYERS: tuple[tuple[str, int], ...] = (("fc6", 4096), ("fc7", FC7_DIM), ("fc8", NUM_CLASSES))


def _weight_shapes() -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    shapes = {}
    channels = 3
    for block in CONV_BLOCKS:
        for name, filters in block:
            shapes[name] = ((3, 3, channels, filters), (filters,))
            channels = filters
    units = 7 * 7 * channels  # pool5 is 7x7x512, flattened in NHWC order
    for name, out in DENSE_LAYERS:
        shapes[name] = ((units, out), (out,))
        units = out
    return shapes


# Layer name -> (kernel shape, bias shape); kernels are HWIO for convs and (in, out) for dense.
WEIGHT_SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = _weight_shapes()
LAYER_NAMES: tuple[str, ...] = tuple(WEIGHT_SHAPES)
