"""Numerical parity with implementations nobody here wrote: Keras' VGG16 and a NumPy reference.

Weights are random (synthesized, UNTRAINED) with non-zero biases and a softmax far from
flat, so a loader that dropped biases, swapped RGB/BGR or flattened pool5 in the wrong
order would change the scores well beyond the tolerances used here.
"""

from __future__ import annotations

import numpy as np
import pytest

from vgg.weight_formats import OUR_TO_KERAS, swap_rgb_bgr


@pytest.fixture(scope="module")
def keras_vgg(synth):
    """keras.applications.VGG16 holding synth weights (BGR conv1_1, as Keras expects)."""
    import keras

    model = keras.applications.VGG16(weights=None)
    for ours, (kernel, bias) in synth.items():
        bgr_kernel = swap_rgb_bgr(kernel) if ours == "conv1_1" else kernel
        model.get_layer(OUR_TO_KERAS[ours]).set_weights([bgr_kernel, bias])
    return model


@pytest.fixture(scope="module")
def keras_files(keras_vgg, tmp_path_factory):
    """Keras' own legacy h5 writer, then our converter to the seed's npz layout."""
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    from vgg.weights import read_weights, save_weights

    folder = tmp_path_factory.mktemp("keras")
    h5 = str(folder / "vgg16_keras.h5")
    with h5py.File(h5, "w") as handle:
        save_weights_to_hdf5_group(handle, keras_vgg)
    npz = str(folder / "vgg16_from_keras.npz")
    weights, _ = read_weights(h5)
    save_weights(weights, npz, format="npz")
    return {"h5": h5, "npz": npz}


@pytest.fixture(scope="module")
def keras_reference(keras_vgg, photo_batch):
    """Keras' model on Keras' own preprocess_input ("caffe": RGB->BGR, minus the mean)."""
    import keras
    from keras.applications.vgg16 import preprocess_input

    features = keras.Model(keras_vgg.input, [keras_vgg.output, keras_vgg.get_layer("fc2").output])
    probs, fc7 = features.predict(preprocess_input(photo_batch.astype(np.float32)), verbose=0)
    return probs, fc7


def test_softmax_is_not_flat(keras_reference):
    probs, _ = keras_reference
    # A flat softmax is 0.001 everywhere; these weights give a clear winner per photo, and
    # a top-5 that differs between photos, so label swaps would be visible.
    assert (probs.max(axis=1) > 0.005).all()
    assert len({tuple(np.argsort(-p)[:5]) for p in probs}) == len(probs)


@pytest.mark.parametrize("fmt", ["h5", "npz"])
def test_same_outputs_as_keras(fmt, keras_files, keras_reference, photo_batch):
    from vgg.inference import Predictor

    probs, fc7 = Predictor(keras_files[fmt])(photo_batch)
    want_probs, want_fc7 = keras_reference
    top5 = np.argsort(-probs, axis=1)[:, :5]
    np.testing.assert_array_equal(top5, np.argsort(-want_probs, axis=1)[:, :5])
    np.testing.assert_allclose(
        np.take_along_axis(probs, top5, 1), np.take_along_axis(want_probs, top5, 1), rtol=1e-4
    )
    np.testing.assert_allclose(probs, want_probs, rtol=1e-3, atol=1e-6)
    # float32 sums of 25088 terms in another order: agree to ~1e-5 of fc7's scale.
    np.testing.assert_allclose(fc7, want_fc7, rtol=1e-3, atol=1e-4 * float(np.abs(want_fc7).max()))


def _conv3x3_relu(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """SAME 3x3 convolution + ReLU by shifting the zero-padded image (HWC, float64)."""
    height, width, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((height, width, kernel.shape[3]))
    for dy in range(3):
        for dx in range(3):
            out += padded[dy : dy + height, dx : dx + width] @ kernel[dy, dx]
    return np.maximum(out + bias, 0)


def _maxpool2(x: np.ndarray) -> np.ndarray:
    h, w, c = x.shape
    return x.reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))


def numpy_vgg16(image: np.ndarray, weights) -> tuple[np.ndarray, np.ndarray]:
    """The seed's TF1 graph in float64 NumPy: RGB minus mean, convs, pools, NHWC flatten, fc."""
    x = image.astype(np.float64) - np.array([123.68, 116.779, 103.939])
    for block in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
        for conv in range(1, block[1] + 1):
            kernel, bias = weights[f"conv{block[0]}_{conv}"]
            x = _conv3x3_relu(x, kernel.astype(np.float64), bias)
        x = _maxpool2(x)
    x = x.reshape(-1)  # NHWC order: row, column, channel
    for name in ("fc6", "fc7"):
        kernel, bias = weights[name]
        x = np.maximum(x @ kernel + bias, 0)
    fc7 = x
    kernel, bias = weights["fc8"]
    logits = fc7 @ kernel + bias
    probs = np.exp(logits - logits.max())
    return probs / probs.sum(), fc7


@pytest.mark.slow
def test_numpy_reference_agrees(predictor, photo_batch, synth):
    want_probs, want_fc7 = numpy_vgg16(photo_batch[0], synth)
    probs, fc7 = predictor(photo_batch[:1])
    np.testing.assert_array_equal(np.argsort(-probs[0])[:5], np.argsort(-want_probs)[:5])
    np.testing.assert_allclose(probs[0], want_probs, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(fc7[0], want_fc7, rtol=1e-3, atol=1e-4 * want_fc7.max())
