"""Keras 3 `.keras` archives as weights: files Keras saved, told from an npz, read in place, or refused."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from tests.conftest import REPO
from tests.vgg.weight_files import assert_same_weights
from vgg.weight_formats import (
    FORMATS,
    OUR_TO_KERAS,
    SNIFF_BYTES,
    WeightsError,
    _member_file,
    format_for_name,
    is_keras_archive,
    sniff_format,
    swap_rgb_bgr,
)
from vgg.weights import describe_weights, read_weights

NPZ, KERAS = FORMATS["npz"], FORMATS["keras"]


@pytest.fixture(scope="module")
def our_keras(synth, tmp_path_factory) -> str:
    """vgg.model's VGG16 holding synth weights, saved by Keras itself: `model.save("vgg16.keras")`."""
    from vgg.model import build_vgg16

    path = str(tmp_path_factory.mktemp("keras") / "vgg16.keras")
    build_vgg16(weights=((layer, *arrays) for layer, arrays in synth.items())).save(path)
    return path


@pytest.fixture(scope="module")
def applications_keras(synth, tmp_path_factory) -> str:
    """keras.applications.VGG16 holding synth weights (BGR conv1_1, as Keras expects), saved by Keras."""
    import keras

    model = keras.applications.VGG16(weights=None)
    for ours, (kernel, bias) in synth.items():
        bgr_kernel = swap_rgb_bgr(kernel) if ours == "conv1_1" else kernel
        model.get_layer(OUR_TO_KERAS[ours]).set_weights([bgr_kernel, bias])
    path = str(tmp_path_factory.mktemp("keras") / "applications_vgg16.keras")
    model.save(path)
    return path


def test_what_keras_writes(our_keras):
    # The layout this reader relies on, as Keras 3 writes it: a zip of three members, the
    # weights stored uncompressed, layers keyed by class and order (conv1_1 is the first Conv2D).
    with zipfile.ZipFile(our_keras) as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
        assert archive.getinfo("model.weights.h5").compress_type == zipfile.ZIP_STORED
        with archive.open("model.weights.h5") as member, h5py.File(io.BytesIO(member.read())) as root:
            assert root["layers/conv2d/vars/0"].shape == (3, 3, 3, 64)
            assert root["layers/dense_2/vars/1"].shape == (1000,)  # fc8's bias: the third Dense


def test_our_model_saved_by_keras_reads_back_and_predicts_the_same(our_keras, synth, predictor, photo_batch):
    from vgg.inference import Predictor

    weights, info = read_weights(our_keras)
    assert (info.format, info.name, info.untrained) == ("keras", "vgg16.keras", False)
    assert_same_weights(weights, synth)  # RGB, as saved: conv1_1 is not flipped
    # The same float32 weights in the same graph as the session's npz predictor: the same outputs.
    probs, fc7 = Predictor(our_keras)(photo_batch)
    want_probs, want_fc7 = predictor(photo_batch)
    np.testing.assert_array_equal(probs, want_probs)
    np.testing.assert_array_equal(fc7, want_fc7)


def test_keras_applications_vgg16_is_read_as_bgr(applications_keras, synth):
    # keras.applications names (block1_conv1 ... predictions) mean Keras' BGR input, as in its h5.
    weights, info = read_weights(applications_keras)
    assert info.format == "keras"
    assert_same_weights(weights, synth)


def test_told_from_an_npz_by_its_members(our_keras, npz_path, tmp_path):
    for path, fmt in ((our_keras, KERAS), (npz_path, NPZ)):
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
        assert sniff_format(head, path) is fmt
        assert sniff_format(head) is NPZ  # both zips; only a look inside tells them apart
    # A .keras named .npz is still the .keras it is; a broken zip is left to the npz reader.
    misnamed = tmp_path / "really_keras.npz"
    misnamed.symlink_to(our_keras)
    assert describe_weights(str(misnamed)).format == "keras"
    assert not is_keras_archive(io.BytesIO(b"PK\x03\x04junk"))
    assert format_for_name("model.KERAS") is KERAS


def fake_archive(path, *, config=None, weights=None, members=None) -> str:
    """A zip in Keras' layout with a made-up config.json and a tiny model.weights.h5 (group -> arrays)."""
    h5 = io.BytesIO()
    with h5py.File(h5, "w") as root:
        for group, (saved_as, arrays) in (weights or {}).items():
            variables = root.create_group(f"{group}/vars")
            if saved_as is not None:
                variables.attrs["name"] = saved_as
            for index, array in enumerate(arrays):
                variables[str(index)] = array
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", '{"keras_version": "3.15.1"}')
        archive.writestr("config.json", json.dumps(config or {"config": {"layers": []}}))
        for member in members if members is not None else ["model.weights.h5"]:
            archive.writestr(member, h5.getvalue())
    return str(path)


def layer(class_name: str, name: str) -> dict:
    return {"class_name": class_name, "config": {"name": name}}


def test_refused_archives_say_why(tmp_path):
    sharded = fake_archive(tmp_path / "s.keras", members=["model.weights.json", "model_00000.weights.h5"])
    with pytest.raises(WeightsError, match=r"s.keras: a Keras archive without model.weights.h5 \(sharded"):
        KERAS.read(sharded, sharded)

    no_layers = fake_archive(tmp_path / "n.keras", config={"class_name": "Custom", "config": {}})
    with pytest.raises(WeightsError, match="n.keras: its config.json lists no layers"):
        KERAS.read(no_layers, no_layers)

    # Another model: one Dense layer, where VGG16 has 16 layers with weights.
    config = {"config": {"layers": [layer("InputLayer", "in"), layer("Dense", "head")]}}
    weights = {"layers/dense": ("head", [np.zeros((4, 2), np.float32), np.zeros(2, np.float32)])}
    other = fake_archive(tmp_path / "o.keras", config=config, weights=weights)
    with pytest.raises(WeightsError, match=r"o.keras: missing layer\(s\) \['block1_conv1'.*no-top file"):
        KERAS.read(other, other)

    # The config says the first Conv2D is conv1_1; the weights file says it holds another layer.
    config = {"config": {"layers": [layer("Conv2D", "conv1_1")]}}
    weights = {"layers/conv2d": ("conv9_9", [np.zeros((3, 3, 3, 64), np.float32), np.zeros(64, np.float32)])}
    mixed = fake_archive(tmp_path / "m.keras", config=config, weights=weights)
    message = r"m.keras: config.json and model.weights.h5 disagree: layers/conv2d holds layer 'conv9_9'"
    with pytest.raises(WeightsError, match=message):
        KERAS.read(mixed, mixed)

    broken = tmp_path / "b.keras"
    broken.write_bytes(open(other, "rb").read()[:300])
    with pytest.raises(WeightsError, match="b.keras: not a readable Keras archive"):
        KERAS.read(str(broken), str(broken))


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("as_file", [False, True])
def test_member_is_read_in_place_or_copied(tmp_path, compression, as_file):
    # Stored (as Keras writes it): a view of the archive's bytes, seekable for h5py. Deflated
    # (a re-zipped file): a decompressed temporary copy. Either from a path or an open file.
    values = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    h5 = io.BytesIO()
    with h5py.File(h5, "w") as root:
        root["x"] = values
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("first.txt", "a member before, so the weights do not start at byte 0")
        archive.writestr("model.weights.h5", h5.getvalue())
    source = open(path, "rb") if as_file else str(path)
    try:
        with zipfile.ZipFile(source) as archive:
            member = archive.getinfo("model.weights.h5")
            with _member_file(source, archive, member) as handle, h5py.File(handle, "r") as root:
                np.testing.assert_array_equal(root["x"][40:60], values[40:60])
                np.testing.assert_array_equal(root["x"][()], values)
    finally:
        if as_file:
            source.close()


def test_cli_converts_a_keras_model_and_will_not_write_one(our_keras, synth, npz_path, tmp_path):
    out = str(tmp_path / "from_keras.npz")
    run = [sys.executable, "-m", "vgg.weights"]
    subprocess.run([*run, "convert", our_keras, out], check=True, cwd=REPO, capture_output=True)
    assert_same_weights(read_weights(out)[0], synth)
    shown = subprocess.run([*run, "inspect", our_keras], cwd=REPO, capture_output=True, text=True, check=True)
    assert shown.stdout.startswith(f"{our_keras}: keras, sha256 ")
    target = str(tmp_path / "w.keras")
    refused = subprocess.run([*run, "convert", npz_path, target], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: {target!r} names a Keras 3 .keras (zip) file, which is read here but not written; "
        "pass --format npz|h5"
    )
