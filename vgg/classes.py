"""ImageNet-1k class names (package data) and top-k decoding of VGG16 probabilities."""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import NamedTuple

import numpy as np

from vgg.architecture import NUM_CLASSES

# Keras' `imagenet_class_index.json` byte for byte (the md5 Keras pins,
# tests/vgg/test_classes.py), committed because Keras downloads it at run time.
# Index order is the sorted WordNet ids.
_DATA_PACKAGE = "vgg"
_DATA_PATH = ("data", "imagenet_class_index.json")
_WNID = re.compile(r"n\d{8}")


class ClassName(NamedTuple):
    """One ImageNet class: WordNet id ("n01440764") and Keras label ("tench")."""

    wnid: str
    label: str


@functools.cache
def class_names() -> tuple[ClassName, ...]:
    """Returns the 1000 ImageNet classes, indexed by class index, loaded once.

    Raises:
        ValueError: If the packaged class index is malformed.
    """
    resource = resources.files(_DATA_PACKAGE).joinpath(*_DATA_PATH)
    with resource.open("r", encoding="utf-8") as f:
        raw = json.load(f)
    return _parse_class_index(raw, source=str(resource))


def _parse_class_index(raw: object, *, source: str) -> tuple[ClassName, ...]:
    expected_keys = [str(i) for i in range(NUM_CLASSES)]
    keys = set(raw) if isinstance(raw, dict) else set()
    if keys != set(expected_keys):
        unexpected = sorted(keys - set(expected_keys))[:3]
        missing = sorted(set(expected_keys) - keys, key=int)[:3]
        raise ValueError(
            f"{source} must be a JSON object with exactly the keys "
            f"'0'..'{NUM_CLASSES - 1}', each mapped to [wnid, label]. "
            f"Received: {type(raw).__name__} with {len(keys)} keys, "
            f"unexpected {unexpected}, missing {missing}. "
            "Reinstall the package to restore the file."
        )
    names = []
    for index, key in enumerate(expected_keys):
        entry = raw[key]
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not all(isinstance(part, str) for part in entry)
            or not _WNID.fullmatch(entry[0])
            or not entry[1]
        ):
            raise ValueError(
                f"{source}: class {index} must be [wnid, label] with wnid like "
                f"'n01440764' and a non-empty label. Received: {entry!r}. "
                "Reinstall the package to restore the file."
            )
        if names and entry[0] <= names[-1].wnid:
            # Class indices follow the sorted wnids; any other order would
            # silently mislabel every prediction.
            raise ValueError(
                f"{source}: wnids must be strictly ascending by class index. "
                f"Received: class {index - 1}={names[-1].wnid!r}, "
                f"class {index}={entry[0]!r}. "
                "Reinstall the package to restore the file."
            )
        names.append(ClassName(wnid=entry[0], label=entry[1]))
    return tuple(names)


def _check_k(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= NUM_CLASSES:
        raise ValueError(f"{name} must be between 1 and {NUM_CLASSES}. Received: {name}={value!r}")
    return int(value)


def _as_batch(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    received = probs.shape
    if probs.ndim == 1:
        probs = probs[np.newaxis, :]
    if probs.ndim != 2 or probs.shape[-1] != NUM_CLASSES:
        raise ValueError(
            f"Expected probabilities of shape (N, {NUM_CLASSES}) or ({NUM_CLASSES},), "
            f"one score per ImageNet class. Received: shape={received}. "
            "Use a model with the 1000-class ImageNet top (include_top=True)."
        )
    if not (np.issubdtype(probs.dtype, np.floating) or np.issubdtype(probs.dtype, np.integer)):
        raise ValueError(
            f"Expected numeric probabilities. Received: dtype={probs.dtype}. Pass the model's float output."
        )
    return probs


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns the k best classes per row, best first.

    Args:
        probs: Scores of shape (N, 1000), or (1000,) treated as (1, 1000).
        k: Number of classes to keep, 1..1000.

    Returns:
        (indices, scores): int32 and float32 arrays of shape (N, k), sorted by
        descending score; equal scores keep the lower class index first.

    Raises:
        ValueError: If the last dimension is not 1000 or k is out of range.
    """
    k = _check_k(k, "top_k")
    batch = _as_batch(probs)
    # float64 so unsigned inputs cannot wrap when negated and float64 inputs
    # are ranked at full precision; a stable sort of the negated scores keeps
    # ties in ascending class order, which argsort()[::-1] would reverse.
    negated = -batch.astype(np.float64)
    order = _top_k_of_candidates(negated, k)
    if order is None:
        order = np.argsort(negated, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(batch, order, axis=1)
    return order.astype(np.int32), scores.astype(np.float32)


def _top_k_of_candidates(negated: np.ndarray, k: int) -> np.ndarray | None:
    """What the stable sort of all 1000 gives, from each row's k best alone; None where that is not enough.

    Only scores at least as good as a row's k-th best can be in its top k. Where exactly k
    are (no tie at the k-th place, no NaN among them), sorting those k, kept in class order
    so that the stable sort breaks ties as the full one does, gives the same classes.
    """
    if k >= negated.shape[1] or not len(negated):
        return None
    kth = np.partition(negated, k - 1, axis=1)[:, k - 1 : k]
    candidates = negated <= kth  # False for NaN: a row with one then has fewer than k
    if not (candidates.sum(axis=1) == k).all():
        return None
    columns = np.nonzero(candidates)[1].reshape(len(negated), k)  # ascending class order per row
    within = np.argsort(np.take_along_axis(negated, columns, axis=1), axis=1, kind="stable")
    return np.take_along_axis(columns, within, axis=1)


def decode_predictions(probs: np.ndarray, top: int = 5) -> list[list[dict]]:
    """Decodes probabilities into the top classes, like Keras' `decode_predictions`.

    Args:
        probs: Scores of shape (N, 1000), or (1000,) treated as (1, 1000).
        top: Number of classes per row, 1..1000.

    Returns:
        One list per row of `top` dicts with keys `class_index` (int), `wnid`
        (str), `label` (str) and `score` (float), best first; plain Python
        types, so the result is JSON-serialisable.

    Raises:
        ValueError: If the last dimension is not 1000 or top is out of range.
    """
    top = _check_k(top, "top")
    indices, scores = top_k(probs, top)
    names = class_names()
    return [
        [
            {
                "class_index": index,
                "wnid": names[index].wnid,
                "label": names[index].label,
                "score": score,
            }
            for index, score in zip(row_indices.tolist(), row_scores.tolist())
        ]
        for row_indices, row_scores in zip(indices, scores)
    ]
