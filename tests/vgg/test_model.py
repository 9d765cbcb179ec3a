"""Architecture of vgg.model: parameter count, layer names and every layer's output shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def model():
    from vgg.model import build_vgg16

    return build_vgg16()


def test_parameter_count(model):
    # 138,357,544, as in Simonyan & Zisserman: the arithmetic is in test_architecture.py,
    # which counts the same from vgg.architecture's shapes; here Keras counts the model.
    assert model.count_params() == 138_357_544


def test_layer_output_shapes(model):
    expected = {
        "preprocess": (224, 224, 3),
        "conv1_1": (224, 224, 64), "conv1_2": (224, 224, 64), "pool1": (112, 112, 64),
        "conv2_1": (112, 112, 128), "conv2_2": (112, 112, 128), "pool2": (56, 56, 128),
        "conv3_1": (56, 56, 256), "conv3_2": (56, 56, 256), "conv3_3": (56, 56, 256),
        "pool3": (28, 28, 256),
        "conv4_1": (28, 28, 512), "conv4_2": (28, 28, 512), "conv4_3": (28, 28, 512),
        "pool4": (14, 14, 512),
        "conv5_1": (14, 14, 512), "conv5_2": (14, 14, 512), "conv5_3": (14, 14, 512),
        "pool5": (7, 7, 512),
        "flatten": (25088,), "fc6": (4096,), "fc7": (4096,), "fc8": (1000,), "prob": (1000,),
    }  # fmt: skip
    for name, shape in expected.items():
        assert tuple(model.get_layer(name).output.shape) == (None, *shape), name
    assert model.input.dtype == "uint8"
    assert {k: tuple(v.shape) for k, v in model.output.items()} == {
        "probs": (None, 1000),
        "fc7": (None, 4096),
    }


def test_weight_shapes_match_the_architecture(model):
    from vgg.architecture import LAYER_NAMES, WEIGHT_SHAPES

    for name in LAYER_NAMES:
        kernel, bias = model.get_layer(name).get_weights()
        assert (kernel.shape, bias.shape) == WEIGHT_SHAPES[name]


def test_default_precision_is_float32(model):
    # Without a precision (vgg.architecture.PRECISIONS lists the default first) every layer
    # holds and computes float32: the parity tests' tolerances are float32's.
    from vgg.architecture import LAYER_NAMES

    for name in LAYER_NAMES:
        layer = model.get_layer(name)
        assert (layer.compute_dtype, layer.kernel.dtype, layer.bias.dtype) == ("float32",) * 3, name


def test_mean_is_subtracted_in_rgb_order():
    from vgg.model import Preprocess

    out = Preprocess()(np.full((1, 2, 2, 3), 200, np.uint8))
    want = [200 - 123.68, 200 - 116.779, 200 - 103.939]
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], want, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"precision": "int8"},
            "precision must be one of ('float32', 'bfloat16', 'float16'). Received: precision='int8'",
        ),
        (
            {"input_dtype": "int32"},
            "input_dtype must be one of ('uint8', 'float32'). Received: input_dtype='int32'",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    from vgg.model import build_vgg16

    with pytest.raises(ValueError) as error:
        build_vgg16(**kwargs)
    assert str(error.value) == message


def test_bfloat16_keeps_float32_outputs():
    from vgg.model import build_vgg16

    model = build_vgg16(precision="bfloat16")
    assert model.get_layer("conv1_1").compute_dtype == "bfloat16"
    assert model.get_layer("conv1_1").kernel.dtype == "bfloat16"
    assert {v.dtype for v in model.output.values()} == {"float32"}


def test_reduced_weights_give_exactly_what_keras_mixed_precision_gives(npz_path, photo_batch, monkeypatch):
    # Keras' mixed_bfloat16 keeps float32 weights and casts them to bfloat16 at each use;
    # storing them cast once must round them the same way, so every output bit agrees.
    import vgg.model
    from vgg.model import load_vgg16

    reduced, _ = load_vgg16(npz_path, precision="bfloat16")
    # A precision is the Keras dtype policy itself, so allowing Keras' own policy name
    # builds the same model the Keras way.
    monkeypatch.setattr(vgg.model, "PRECISIONS", (*vgg.model.PRECISIONS, "mixed_bfloat16"))
    mixed, _ = load_vgg16(npz_path, precision="mixed_bfloat16")
    assert mixed.get_layer("fc6").kernel.dtype == "float32"
    got, want = reduced(photo_batch), mixed(photo_batch)
    for key in ("probs", "fc7"):
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))


def test_float16_refuses_weights_it_cannot_hold(synth, tmp_path):
    from vgg.model import load_vgg16
    from vgg.weights import save_weights

    too_big = dict(synth)
    too_big["fc8"] = (synth["fc8"][0], np.full(1000, 7e4, np.float32))  # float16 max: 65504
    path = str(tmp_path / "big.npz")
    save_weights(too_big, path, format="npz")
    with pytest.raises(ValueError, match=r"fc8/bias: weights up to 7e\+04, beyond float16's 65504"):
        load_vgg16(path, precision="float16")


def test_float32_input_model_agrees_with_uint8(predictor, photo_batch, synth):
    from vgg.model import build_vgg16
    from vgg.weights import apply_weights

    float_model = build_vgg16(input_dtype="float32")
    apply_weights(float_model, synth)
    out = float_model.predict(photo_batch[:2].astype(np.float32), verbose=0)
    probs, fc7 = predictor(photo_batch[:2])
    np.testing.assert_allclose(out["probs"], probs, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out["fc7"], fc7, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_loading_holds_one_copy_of_the_weights(npz_path):
    # The variables are 553 MB (138,357,544 float32). Loading the npz and one forward pass
    # measured +676 MB here. The two ways this regresses both cost ~+1.25 GB: reading fc6
    # whole (array + tensor + variable: 3 x 411 MB at once), or leaving a variable in
    # TensorFlow's copy-on-read mode after filling it, which copies every weight on each
    # forward pass. A fresh process, so that nothing else in the suite is counted, on the
    # CPU even where a GPU is present: this measures host memory, where the weights sit
    # only when the model runs on the CPU.
    code = """if True:
        import json, sys
        import numpy as np
        import tensorflow as tf

        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

        from vgg.inference import Predictor
        before = status("VmRSS")
        predictor = Predictor(sys.argv[1])
        predictor(np.zeros((1, 224, 224, 3), np.uint8))
        print(json.dumps({"growth": status("VmHWM") - before}))
    """
    done = subprocess.run(
        [sys.executable, "-c", code, npz_path],
        cwd=REPO,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"},
        capture_output=True,
        text=True,
        check=True,
    )
    growth = json.loads(done.stdout.strip().splitlines()[-1])["growth"]
    assert 553e6 < growth < 900e6, growth


_LOADED = """if True:
    import json, sys
    import vgg.model

    if sys.argv[2] == "keep":  # what loading held before it handed freed blocks back
        vgg.model.release_freed_memory = lambda: None
    vgg.model.load_vgg16(sys.argv[1])
    with open("/proc/self/status") as status:
        print(json.dumps(next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))))
"""


def test_loading_hands_its_freed_blocks_back(npz_path):
    # fill_weights frees one 16 MB block after another; glibc keeps freed blocks of that size
    # for reuse unless told to give them back. A fresh process each, on the CPU.
    rss = {}
    for mode in ("keep", "release"):
        done = subprocess.run(
            [sys.executable, "-c", _LOADED, npz_path, mode],
            cwd=REPO,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"},
            capture_output=True,
            text=True,
            check=True,
        )
        rss[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    assert rss["keep"] - rss["release"] > 16 * 2**20, rss
