"""Weights for the weights tests: tiny stand-in files that reach each check, and an exact comparison."""

from __future__ import annotations

import numpy as np

from vgg.architecture import LAYER_NAMES, WEIGHT_SHAPES


def assert_same_weights(a, b) -> None:
    """Both hold every layer, in the network's order, with identical arrays."""
    assert list(a) == list(b) == list(LAYER_NAMES)
    for layer in LAYER_NAMES:
        for x, y in zip(a[layer], b[layer]):
            np.testing.assert_array_equal(x, y)


def tiny_npz(path, *, drop=(), extra=None, shapes=None, objects=()) -> str:
    """An npz in the seed's layout with every key, and tiny kernels unless `shapes` says otherwise.

    Kernels default to shape (1,), so conv1_1_W is the first array a reader refuses;
    biases have their real shapes. All keys with small arrays are enough to reach each check.

    Args:
      drop: keys to leave out.
      extra: more arrays, by key.
      shapes: key -> shape for a kernel ("conv1_1_W") instead of (1,).
      objects: keys to replace with an object (pickled) array.
    """
    arrays = {}
    for layer, (_, bias_shape) in WEIGHT_SHAPES.items():
        arrays[f"{layer}_W"] = np.zeros((shapes or {}).get(f"{layer}_W", (1,)), np.float32)
        arrays[f"{layer}_b"] = np.zeros(bias_shape, np.float32)
    for key in drop:
        del arrays[key]
    for key in objects:
        arrays[key] = np.array([{"evil": 1}], dtype=object)
    arrays.update(extra or {})
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return str(path)
