"""Tests for vgg.classes: the packaged class index, top_k, decode_predictions."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import os
import re
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from vgg import classes
from vgg.architecture import NUM_CLASSES
from vgg.classes import ClassName, class_names, decode_predictions, top_k

# md5 that Keras pins for the class index it downloads
# (keras/src/applications/imagenet_utils.py, `file_hash=` in decode_predictions).
KERAS_CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"


def _packaged_bytes() -> bytes:
    return (resources.files("vgg") / "data" / "imagenet_class_index.json").read_bytes()


def _packaged_json() -> dict:
    return json.loads(_packaged_bytes())


# --- class_names ---------------------------------------------------------------


def test_anchor_classes():
    names = class_names()
    # Index order is the sorted WordNet ids: first, a middle one, last.
    assert names[0] == ClassName(wnid="n01440764", label="tench")
    assert names[356] == ClassName(wnid="n02441942", label="weasel")
    assert names[999] == ClassName(wnid="n15075141", label="toilet_tissue")


def test_count_unique_ascending_wnids():
    wnids = [name.wnid for name in class_names()]
    assert len(wnids) == NUM_CLASSES == 1000
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in wnids)
    # Strictly ascending implies unique; sorted order is what defines the index.
    assert all(a < b for a, b in itertools.pairwise(wnids))
    assert len(set(wnids)) == 1000


def test_labels_are_keras_labels_with_two_known_duplicates():
    labels = [name.label for name in class_names()]
    # Keras' labels are not unique: "crane" is the bird (134) and the machine
    # (517), "maillot" two swimsuit synsets (638, 639); so 1000 - 2 = 998.
    assert len(set(labels)) == 998
    assert [i for i, label in enumerate(labels) if label == "crane"] == [134, 517]
    assert [i for i, label in enumerate(labels) if label == "maillot"] == [638, 639]


def test_class_names_loaded_once():
    assert class_names() is class_names()


def test_packaged_json_is_keras_file_byte_for_byte():
    # The md5 the installed Keras checks its download against, read from its source, so
    # that this fails if either our file or Keras' pinned file changes.
    from keras.src.applications import imagenet_utils

    pinned = re.findall(r'file_hash="([0-9a-f]{32})"', inspect.getsource(imagenet_utils.decode_predictions))
    assert pinned == [KERAS_CLASS_INDEX_MD5]
    data = _packaged_bytes()
    assert hashlib.md5(data).hexdigest() == KERAS_CLASS_INDEX_MD5
    # Keras' file is `json.dumps` of the mapping: one line, no trailing newline.
    assert data == json.dumps(_packaged_json()).encode()
    assert list(_packaged_json()) == [str(i) for i in range(1000)]


def test_malformed_class_index_rejected():
    good = _packaged_json()
    missing = dict(good)
    del missing["5"]
    with pytest.raises(ValueError, match=r"999 keys, unexpected \[\], missing \['5'\]"):
        classes._parse_class_index(missing, source="x.json")

    swapped = dict(good)
    swapped["3"], swapped["4"] = good["4"], good["3"]
    with pytest.raises(
        ValueError,
        match=r"strictly ascending.*class 3='n01494475', class 4='n01491361'",
    ):
        classes._parse_class_index(swapped, source="x.json")

    bad_wnid = dict(good)
    bad_wnid["0"] = ["01440764", "tench"]
    with pytest.raises(ValueError, match=r"class 0 .* Received: \['01440764', 'tench'\]"):
        classes._parse_class_index(bad_wnid, source="x.json")

    with pytest.raises(ValueError, match="Received: list with 0 keys"):
        classes._parse_class_index([], source="x.json")


# --- top_k ---------------------------------------------------------------------


def test_top_k_orders_by_score_and_breaks_ties_by_lower_index():
    probs = np.zeros((2, 1000), dtype=np.float32)
    # Row 0: indices 7 and 3 tie at 0.4, so 3 comes first, then 7, then 5 (0.2).
    probs[0, [7, 3, 5]] = [0.4, 0.4, 0.2]
    # Row 1: distinct scores out of index order.
    probs[1, [999, 0, 500]] = [0.5, 0.3, 0.2]
    indices, scores = top_k(probs, 3)
    np.testing.assert_array_equal(indices, [[3, 7, 5], [999, 0, 500]])
    np.testing.assert_array_equal(scores, np.array([[0.4, 0.4, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32))
    assert indices.dtype == np.int32
    assert scores.dtype == np.float32


def test_top_k_all_equal_keeps_index_order():
    # Uniform scores: every class ties, so the order is 0, 1, 2, ...
    indices, _ = top_k(np.full((1, 1000), 1e-3), 1000)
    np.testing.assert_array_equal(indices, [np.arange(1000)])


def test_top_k_one_dimensional_input_is_one_row():
    probs = np.zeros(1000)
    probs[42] = 1.0
    indices, scores = top_k(probs, 2)
    # (1000,) is treated as (1, 1000); 0 ties at 0.0 for the rest -> index 0.
    assert indices.shape == scores.shape == (1, 2)
    np.testing.assert_array_equal(indices, [[42, 0]])
    np.testing.assert_array_equal(scores, [[1.0, 0.0]])


def test_top_k_shapes_for_batch():
    probs = np.random.default_rng(0).random((4, 1000))
    indices, scores = top_k(probs, 5)
    assert indices.shape == scores.shape == (4, 5)
    # Same as a full descending sort (random floats: no ties).
    np.testing.assert_array_equal(indices, np.argsort(probs, axis=1)[:, ::-1][:, :5])


def _reference_top_k(probs, k):
    """The definition: a stable sort of all 1000 negated float64 scores."""
    order = np.argsort(-np.asarray(probs).astype(np.float64), axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(np.asarray(probs), order, axis=1)


@pytest.mark.parametrize("k", [1, 2, 5, 999, 1000])
def test_top_k_is_the_stable_sort_of_all_scores(k):
    # Softmax-like rows, rows with ties at and across the k-th place, NaNs, infinities,
    # unsigned and signed integers: the same classes and order as the full stable sort.
    rng = np.random.default_rng(k)
    rows = [rng.dirichlet(np.ones(1000)).astype(np.float32) for _ in range(3)]
    tied = rng.integers(0, 4, 1000).astype(np.float32)  # hundreds of ties at every place
    few = np.zeros(1000, np.float32)
    few[[10, 20, 30, 40, 50, 60]] = [0.3, 0.2, 0.2, 0.2, 0.05, 0.05]  # a tie across places 2-4 and 5-6
    nan = rows[0].copy()
    nan[[5, int(rows[0].argmax())]] = np.nan
    inf = rows[1].copy()
    inf[[7, 8]] = [np.inf, -np.inf]
    cases = [np.stack(rows), np.stack([tied, few, rows[2]]), nan[None], inf[None],
             rng.integers(0, 3, (2, 1000)).astype(np.uint8), rng.integers(-2, 2, (2, 1000))]  # fmt: skip
    for probs in cases:
        indices, scores = top_k(probs, k)
        want_indices, want_scores = _reference_top_k(probs, k)
        np.testing.assert_array_equal(indices, want_indices)
        np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_top_k_float64_ranked_at_full_precision():
    probs = np.zeros(1000)
    # Equal once cast to float32, but index 9 is larger in float64.
    probs[[2, 9]] = [0.1, 0.1 + 1e-12]
    indices, _ = top_k(probs, 2)
    np.testing.assert_array_equal(indices, [[9, 2]])


@pytest.mark.parametrize("shape", [(10,), (2, 10), (2, 1001), (2, 1, 1000), ()])
def test_top_k_rejects_wrong_shape(shape):
    with pytest.raises(ValueError, match=re.escape(f"Received: shape={shape}")):
        top_k(np.zeros(shape), 5)


@pytest.mark.parametrize("k", [0, -1, 1001, 2.0, True, None])
def test_top_k_rejects_k_out_of_range(k):
    with pytest.raises(ValueError, match=re.escape(f"Received: top_k={k!r}")):
        top_k(np.zeros((1, 1000)), k)


def test_top_k_error_message_exact():
    with pytest.raises(ValueError) as info:
        top_k(np.zeros(1000), 0)
    assert str(info.value) == "top_k must be between 1 and 1000. Received: top_k=0"


def test_top_k_accepts_numpy_integer_k_and_bounds():
    probs = np.zeros(1000)
    assert top_k(probs, np.int64(1))[0].shape == (1, 1)
    assert top_k(probs, 1000)[0].shape == (1, 1000)


def test_top_k_rejects_non_numeric():
    with pytest.raises(ValueError, match="Received: dtype=<U1"):
        top_k(np.full(1000, "a"), 1)


# --- decode_predictions ----------------------------------------------------------


def test_decode_predictions_dicts_and_plain_types():
    probs = np.zeros((2, 1000), dtype=np.float32)
    probs[0, [356, 0]] = [0.75, 0.25]
    probs[1, 999] = 1.0
    decoded = decode_predictions(probs, top=2)
    # 0.75 and 0.25 are exact in float32, so the Python floats are exact too;
    # row 1 ties at 0.0 after 999, and the lowest index (0) wins.
    assert decoded == [
        [
            {"class_index": 356, "wnid": "n02441942", "label": "weasel", "score": 0.75},
            {"class_index": 0, "wnid": "n01440764", "label": "tench", "score": 0.25},
        ],
        [
            {
                "class_index": 999,
                "wnid": "n15075141",
                "label": "toilet_tissue",
                "score": 1.0,
            },
            {"class_index": 0, "wnid": "n01440764", "label": "tench", "score": 0.0},
        ],
    ]
    entry = decoded[0][0]
    assert [type(entry[key]) for key in ("class_index", "wnid", "label", "score")] == [
        int,
        str,
        str,
        float,
    ]
    assert json.loads(json.dumps(decoded)) == decoded


def test_decode_predictions_default_top_is_five_and_1d_input():
    decoded = decode_predictions(np.random.default_rng(1).random(1000))
    assert len(decoded) == 1
    assert len(decoded[0]) == 5
    scores = [entry["score"] for entry in decoded[0]]
    assert scores == sorted(scores, reverse=True)


def test_decode_predictions_rejects_bad_top_and_shape():
    with pytest.raises(ValueError) as info:
        decode_predictions(np.zeros(1000), top=0)
    assert str(info.value) == "top must be between 1 and 1000. Received: top=0"
    with pytest.raises(ValueError, match=re.escape("Received: shape=(1, 999)")):
        decode_predictions(np.zeros((1, 999)))


def test_decode_predictions_matches_keras(tmp_path):
    """Keras' own decode_predictions, fed our file, gives the same wnids and labels.

    Keras reads the cached class index from $KERAS_HOME/models and only
    downloads when the md5 differs, so a copy of our file (Keras' own, byte for
    byte) keeps it offline. A subprocess because KERAS_HOME is read once, when
    keras is imported.
    """
    models = tmp_path / "models"
    models.mkdir()
    (models / "imagenet_class_index.json").write_bytes(_packaged_bytes())

    probs = np.random.default_rng(2).random((3, 1000)).astype(np.float32)
    np.save(tmp_path / "probs.npy", probs)
    script = (
        "import json, sys, numpy as np\n"
        "from keras.applications.imagenet_utils import decode_predictions\n"
        "probs = np.load(sys.argv[1])\n"
        "rows = decode_predictions(probs, top=10)\n"
        "out = [[[w, l] for w, l, _ in row] for row in rows]\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "probs.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    keras_out = json.loads(result.stdout.strip().splitlines()[-1])

    ours = [[[entry["wnid"], entry["label"]] for entry in row] for row in decode_predictions(probs, top=10)]
    # Random float32 scores have no ties among the top 10, so Keras'
    # argsort()[::-1] order and our stable order must agree exactly.
    assert ours == keras_out
