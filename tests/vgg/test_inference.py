"""vgg.inference.Predictor: input checks, reduced precision quality, XLA, out-of-memory back-off."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from vgg.inference import Predictor


def test_rejects_wrong_shape_and_dtype(predictor):
    with pytest.raises(ValueError, match=r"shape \(N, 224, 224, 3\). Received: shape=\(2, 224, 224\)"):
        predictor(np.zeros((2, 224, 224), np.uint8))
    with pytest.raises(ValueError, match="must be uint8 RGB.*Received: dtype=float32"):
        predictor(np.zeros((1, 224, 224, 3), np.float32))


def test_empty_batch(predictor):
    probs, fc7 = predictor(np.zeros((0, 224, 224, 3), np.uint8))
    assert probs.shape == (0, 1000) and fc7.shape == (0, 4096)


def test_batches_are_independent(predictor, photo_batch):
    # A photo's result does not depend on what it is batched with.
    probs_all, fc7_all = predictor(photo_batch)
    probs_one, fc7_one = predictor(photo_batch[2:3])
    np.testing.assert_allclose(probs_one[0], probs_all[2], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fc7_one[0], fc7_all[2], rtol=1e-4, atol=1e-4)


def test_bfloat16_stays_close_to_float32(npz_path, predictor, photo_batch):
    probs32, fc7_32 = predictor(photo_batch)
    probs16, fc7_16 = Predictor(npz_path, precision="bfloat16")(photo_batch)
    cosine = (fc7_32 * fc7_16).sum(1) / np.linalg.norm(fc7_32, axis=1) / np.linalg.norm(fc7_16, axis=1)
    assert cosine.min() >= 0.999, cosine  # measured 0.99996-0.99997 on the sample photos
    # Untrained weights give near-ties at the top (the two best classes within ~1% on
    # some photos), where any rounding may swap them; where float32's winner leads by
    # more than 5% of its score, bfloat16 must pick the same class.
    top2 = np.sort(probs32, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.05 * top2[:, 1]
    assert clear.any()
    np.testing.assert_array_equal(probs16.argmax(1)[clear], probs32.argmax(1)[clear])


def test_xla_gives_the_same_outputs(npz_path, predictor, photo_batch):
    probs, fc7 = Predictor(npz_path, jit=True)(photo_batch[:2])
    want_probs, want_fc7 = predictor(photo_batch[:2])
    np.testing.assert_allclose(probs, want_probs, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(fc7, want_fc7, rtol=1e-3, atol=1e-3)


def test_out_of_memory_halves_the_batch_and_remembers(predictor, photo_batch, monkeypatch):
    sizes = []
    forward = predictor._forward

    def fake_forward(images):
        sizes.append(len(images))
        if len(images) > 2:  # a device that holds at most 2 images
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return forward(images)

    monkeypatch.setattr(predictor, "_forward", fake_forward)
    monkeypatch.setattr(predictor, "max_batch_size", None)
    probs, _ = predictor(photo_batch[:5])
    assert probs.shape == (5, 1000)
    # 5 fails -> cap 2; then 2, 2, 1: every image once, in order.
    assert sizes == [5, 2, 2, 1] and predictor.max_batch_size == 2
    np.testing.assert_allclose(probs[4], predictor(photo_batch[4:5])[0][0], rtol=1e-4, atol=1e-7)
