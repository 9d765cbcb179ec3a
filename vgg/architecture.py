"""VGG16's shape as data: layer names, weight shapes, sizes, mean and precisions (no TensorFlow import).

The one home of the model's constants: `vgg/` and `pipeline/` import them from here.
"""

from __future__ import annotations

IMAGE_SIZE = 224  # input side in pixels: images are IMAGE_SIZE x IMAGE_SIZE x 3 RGB
NUM_CLASSES = 1000  # ImageNet-1k: the width of fc8 and of the softmax
FC7_DIM = 4096  # the width of fc7, the embedding

# The precisions the model runs in, the default first. Each is also the Keras dtype
# policy that vgg.model gives every layer (weights stored and computed in it).
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16")

# Images per slice of the convolutions on a CPU (vgg.inference.Predictor's conv_batch="auto").
# The activations of the first blocks grow with the images convolved at once (conv1's output
# is 12.8 MB per image in float32); the dense layers still see the whole batch, so fc6's
# weights are read once per batch. On a GPU the whole batch is convolved at once.
CPU_CONV_BATCH = 4

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
    side = IMAGE_SIZE // 2 ** len(CONV_BLOCKS)  # each block halves it: 224 / 2**5 = 7
    units = side * side * channels  # pool5 is 7x7x512, flattened in NHWC order
    for name, out in DENSE_LAYERS:
        shapes[name] = ((units, out), (out,))
        units = out
    return shapes


# Layer name -> (kernel shape, bias shape); kernels are HWIO for convs and (in, out) for dense.
WEIGHT_SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = _weight_shapes()
LAYER_NAMES: tuple[str, ...] = tuple(WEIGHT_SHAPES)
