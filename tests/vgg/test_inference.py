"""vgg.inference.Predictor: input checks, conv slices, reduced precision, XLA, out-of-memory back-off."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from vgg.inference import CPU_CONV_BATCH, Predictor


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
    xla = Predictor(npz_path, jit=True)
    assert xla.conv_batch is None  # "auto" with jit: XLA convolves the whole batch
    with pytest.raises(ValueError, match="conv_batch cannot be combined with jit"):
        Predictor(npz_path, jit=True, conv_batch=2)
    probs, fc7 = xla(photo_batch[:2])
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


def test_conv_slices_give_the_whole_batch_outputs(npz_path, predictor, photo_batch):
    # The session's predictor convolves CPU_CONV_BATCH images at a time (auto, on a CPU);
    # batches that are not a multiple of the slice leave a short last slice.
    assert predictor.conv_batch == CPU_CONV_BATCH
    whole = Predictor(npz_path, conv_batch=None)
    assert whole.conv_batch is None
    three = Predictor(npz_path, conv_batch=3)
    for size in (1, 2, len(photo_batch)):
        want_probs, want_fc7 = whole(photo_batch[:size])
        for sliced in (predictor, three):
            probs, fc7 = sliced(photo_batch[:size])
            np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(fc7, want_fc7, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "two"])
def test_rejects_a_bad_conv_batch(npz_path, bad):
    with pytest.raises(ValueError, match="conv_batch must be a positive int"):
        Predictor(npz_path, conv_batch=bad)


_ACTIVATIONS = """
import json, sys
import numpy as np
from vgg.inference import Predictor

def peak_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

conv = json.loads(sys.argv[2])
predictor = Predictor(sys.argv[1], conv_batch=conv)
before = peak_mib()
predictor(np.zeros((16, 224, 224, 3), np.uint8))
print(json.dumps(peak_mib() - before))
"""


def test_conv_slices_bound_the_activations(npz_path):
    # What a batch of 16 adds to the process's peak memory, each in a fresh process: the
    # convolutions' activations grow with the images convolved at once, not with the batch.
    added = {}
    for conv in (None, 2):
        done = subprocess.run(
            [sys.executable, "-c", _ACTIVATIONS, npz_path, json.dumps(conv)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        added[conv] = json.loads(done.stdout.splitlines()[-1])
    # conv1's output alone is 16 x 12.8 MB for the whole batch, 2 x 12.8 MB in slices of 2.
    assert added[None] > 16 * 12.8 / 1.05, added
    assert added[2] < added[None] / 3, added
