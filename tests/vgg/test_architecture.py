"""vgg.architecture: the model's constants and shapes as data, importable without TensorFlow."""

from __future__ import annotations

import math

from tests.modules import imported_modules
from vgg import architecture
from vgg.architecture import CONV_BLOCKS, LAYER_NAMES, WEIGHT_SHAPES


def test_parameter_count_from_the_shapes():
    # Convs, 3*3*in*out + out each:
    #   conv1: 1,792 + 36,928; conv2: 73,856 + 147,584; conv3: 295,168 + 2 x 590,080;
    #   conv4: 1,180,160 + 2 x 2,359,808; conv5: 3 x 2,359,808 -> 14,714,688 in all.
    # fc6: (7*7*512)*4096 + 4096 = 25088*4096 + 4096 = 102,764,544
    # fc7: 4096*4096 + 4096 = 16,781,312; fc8: 4096*1000 + 1000 = 4,097,000.
    # Total 138,357,544, as in Simonyan & Zisserman (tests/vgg/test_model.py counts Keras' too).
    sizes = {name: math.prod(kernel) + math.prod(bias) for name, (kernel, bias) in WEIGHT_SHAPES.items()}
    assert sum(sizes[name] for block in CONV_BLOCKS for name, _ in block) == 14_714_688
    assert (sizes["fc6"], sizes["fc7"], sizes["fc8"]) == (102_764_544, 16_781_312, 4_097_000)
    assert sum(sizes.values()) == 138_357_544


def test_layer_names_and_shapes():
    # 13 convs then 3 dense layers, in the order of the network (and of every weights file).
    assert LAYER_NAMES == (
        "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
        "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "fc8",
    )  # fmt: skip
    assert WEIGHT_SHAPES["conv1_1"] == ((3, 3, 3, 64), (64,))  # HWIO, RGB in
    assert WEIGHT_SHAPES["conv5_3"] == ((3, 3, 512, 512), (512,))
    # pool5 is 224 / 2**5 = 7 pixels a side with 512 channels, flattened: 25088 inputs.
    assert WEIGHT_SHAPES["fc6"] == ((25088, 4096), (4096,))
    # Each dense layer takes the one before it: fc7 4096 -> 4096 (the embedding), fc8 4096 -> 1000 classes.
    assert WEIGHT_SHAPES["fc7"] == ((4096, 4096), (4096,))
    assert WEIGHT_SHAPES["fc8"] == ((4096, 1000), (1000,))


def test_module_imports_nothing_but_the_standard_library():
    # The launcher, the pipeline's options and vgg.preprocess import these constants;
    # they must not pull in TensorFlow (seconds and hundreds of MB) or anything else.
    assert imported_modules(architecture) == {"__future__"}
