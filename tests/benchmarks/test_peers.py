"""The tuned peer's inference_fn: Beam's handler hook calling the model through one traced function."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.peers import command, traced_inference_fn


@pytest.fixture(scope="module")
def small_model():
    """A stand-in for VGG16 with its input shape: (N, 224, 224, 3) float32 -> (N, 4) softmax."""
    import keras

    inputs = keras.Input((224, 224, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(pooled))


def test_traced_inference_fn_gives_the_models_outputs_per_element(small_model):
    inference_fn = traced_inference_fn()
    rng = np.random.default_rng(0)
    for size in (3, 2):  # full and last, smaller batches go through the same traced function
        batch = [rng.normal(size=(224, 224, 3)).astype(np.float32) for _ in range(size)]
        results = inference_fn(small_model, batch, {}, "weights.h5")
        want = np.asarray(small_model(np.stack(batch)))
        assert len(results) == size
        for result, example, row in zip(results, batch, want):
            assert result.example is example and result.model_id == "weights.h5"
            np.testing.assert_allclose(result.inference, row, rtol=1e-5, atol=1e-6)


def test_peer_commands():
    # The tuned peer gets our batch size; the stock one takes the flag but keeps Beam's defaults.
    argv = command("tuned", "in", "out", "w.h5", 16)
    assert argv[1:] == ["-m", "benchmarks.peers", "tuned", "in", "out", "w.h5", "--batch_size", "16"]
