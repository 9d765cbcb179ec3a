"""Weight loaders: round trips, every h5 naming style, and a clear error for every bad file."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from tests.conftest import REPO, SEED
from vgg.architecture import LAYER_NAMES, WEIGHT_SHAPES
from vgg.weights import (
    WeightsError,
    describe_weights,
    read_weights,
    save_weights,
    sha256_file,
    synth_weights,
)


def assert_same_weights(a, b):
    assert list(a) == list(b) == list(LAYER_NAMES)
    for layer in LAYER_NAMES:
        for x, y in zip(a[layer], b[layer]):
            np.testing.assert_array_equal(x, y)


def test_synth_is_deterministic_and_marked(synth, npz_path, h5_path):
    again = synth_weights(SEED)
    np.testing.assert_array_equal(again["fc8"][1], synth["fc8"][1])
    assert not np.array_equal(synth_weights(SEED + 1)["conv1_1"][0], synth["conv1_1"][0])
    # Non-zero biases: a loader that dropped them would change the outputs.
    assert all(np.abs(bias).min() > 0 for _, bias in synth.values())
    assert describe_weights(npz_path).untrained and describe_weights(h5_path).untrained


def test_npz_and_h5_hold_the_same_network(synth, npz_path, h5_path):
    npz, npz_info = read_weights(npz_path)
    h5, h5_info = read_weights(h5_path)
    assert (npz_info.format, h5_info.format) == ("npz", "h5")
    assert_same_weights(npz, synth)
    assert_same_weights(h5, synth)  # the h5 stores conv1_1 BGR; reading flips it back
    with h5py.File(h5_path) as root:
        stored = root["block1_conv1"]["block1_conv1_W_1:0"][()]
    np.testing.assert_array_equal(stored, synth["conv1_1"][0][:, :, ::-1, :])


@pytest.mark.parametrize("naming", ["keras1", "keras2", "keras3"])
def test_h5_naming_styles_round_trip(naming, synth, tmp_path):
    path = str(tmp_path / "w.h5")
    save_weights(synth, path, format="h5", naming=naming)
    weights, _ = read_weights(path)
    assert_same_weights(weights, synth)


def test_cli_round_trip_npz_h5_npz(npz_path, tmp_path):
    h5, npz = str(tmp_path / "a.h5"), str(tmp_path / "b.npz")
    run = [sys.executable, "-m", "vgg.weights", "convert"]
    subprocess.run([*run, npz_path, h5], check=True, cwd=REPO, capture_output=True)
    subprocess.run([*run, h5, npz], check=True, cwd=REPO, capture_output=True)
    assert_same_weights(read_weights(npz)[0], read_weights(npz_path)[0])
    # Converting synthesized weights keeps the UNTRAINED label.
    assert describe_weights(h5).untrained and describe_weights(npz).untrained


def test_cli_synth_h5_and_inspect(tmp_path):
    out = str(tmp_path / "s.h5")
    done = subprocess.run(
        [sys.executable, "-m", "vgg.weights", "synth", "--format", "h5", "--seed", "3", "--out", out],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "UNTRAINED" in done.stdout
    assert_same_weights(read_weights(out)[0], synth_weights(3))
    shown = subprocess.run(
        [sys.executable, "-m", "vgg.weights", "inspect", out, "--sha256", "0" * 64],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 2 and "sha256 is" in shown.stderr and "Traceback" not in shown.stderr


def test_sha256_check(npz_path):
    digest = sha256_file(npz_path)
    assert describe_weights(npz_path, sha256=digest.upper()).sha256 == digest
    with pytest.raises(WeightsError, match=f"sha256 is {digest}, expected {'1' * 64}"):
        read_weights(npz_path, sha256="1" * 64)


# ------------------------------------------------------------------ bad files
# Small stand-ins: all keys with tiny arrays are enough to reach each check.


def tiny_npz(path, *, drop=(), extra=None, shapes=None, objects=()):
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


def test_missing_key(tmp_path):
    path = tiny_npz(tmp_path / "w.npz", drop=["fc7_b"])
    with pytest.raises(WeightsError, match=r"w.npz: missing key\(s\) \['fc7_b'\]"):
        describe_weights(path)


def test_unexpected_key_is_not_ignored(tmp_path):
    path = tiny_npz(tmp_path / "w.npz", extra={"fc9_W": np.zeros(2)})
    with pytest.raises(WeightsError, match=r"unexpected key\(s\) \['fc9_W'\]"):
        describe_weights(path)


def test_wrong_shape(tmp_path):
    path = tiny_npz(tmp_path / "w.npz")  # conv1_1_W has shape (1,)
    message = r"conv1_1_W \(kernel\) has shape \(1,\); expected \(3, 3, 3, 64\)"
    with pytest.raises(WeightsError, match=message):
        read_weights(path)
    with pytest.raises(WeightsError, match="conv1_1_W"):
        describe_weights(path)


def test_object_array_is_never_unpickled(tmp_path):
    path = tiny_npz(tmp_path / "w.npz", objects=["fc8_b"])
    with pytest.raises(WeightsError, match="'fc8_b' is an object array, which only pickle can load"):
        describe_weights(path)
    with pytest.raises(WeightsError, match="never unpickled"):
        read_weights(path)


def test_truncated_files(npz_path, h5_path, tmp_path):
    for source in (npz_path, h5_path):
        cut = tmp_path / ("cut" + os.path.splitext(source)[1])
        with open(source, "rb") as handle:
            cut.write_bytes(handle.read(os.path.getsize(source) // 2))
        with pytest.raises(WeightsError, match="cut") as error:
            read_weights(str(cut))
        assert "could not be read" in str(error.value) or "not a readable" in str(error.value)


def test_not_a_weights_file(tmp_path):
    for name, data in {"w.npz": b"<html>404</html>", "w.h5": b"", "x.npz": b"PK\x03\x04junk"}.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(WeightsError, match=r"w.npz: neither an npz \(zip\) nor an HDF5 file"):
        describe_weights(str(tmp_path / "w.npz"))
    with pytest.raises(WeightsError, match="w.h5: neither"):
        describe_weights(str(tmp_path / "w.h5"))
    with pytest.raises(WeightsError, match="x.npz: not a readable npz"):
        describe_weights(str(tmp_path / "x.npz"))
    with pytest.raises(WeightsError, match="no such weights file"):
        describe_weights(str(tmp_path / "absent.npz"))
    with pytest.raises(WeightsError, match="is a directory"):
        describe_weights(str(tmp_path))


def test_h5_errors(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as root:
        root["x"] = np.zeros(3)
    with pytest.raises(WeightsError, match="not Keras weights"):
        describe_weights(str(plain))

    notop = tmp_path / "notop.h5"
    with h5py.File(notop, "w") as root:
        root.attrs["layer_names"] = [b"block1_conv1"]
        group = root.create_group("block1_conv1")
        group.attrs["weight_names"] = [b"block1_conv1/kernel:0", b"block1_conv1/bias:0"]
        group["block1_conv1/kernel:0"] = np.zeros((3, 3, 3, 64), np.float32)
        group["block1_conv1/bias:0"] = np.zeros(64, np.float32)
    with pytest.raises(WeightsError, match=r"missing layer\(s\) .*'fc1'.*no-top file"):
        describe_weights(str(notop))

    model = tmp_path / "model.h5"
    with h5py.File(model, "w") as root:
        root.attrs["model_config"] = (
            b'{"class_name": "Functional", "config": {"layers": [{"class_name": "Lambda"}]}}'
        )
        root.create_group("model_weights").attrs["layer_names"] = []
    with pytest.raises(WeightsError, match="whole Keras model with Lambda layers"):
        describe_weights(str(model))


def test_bad_h5_shape_names_the_keras_layer(synth, tmp_path):
    path = tmp_path / "w.h5"
    save_weights(synth, str(path), format="h5")
    with h5py.File(path, "a") as root:
        del root["fc2"]["fc2/bias:0"]
        root["fc2"]["fc2/bias:0"] = np.zeros(10, np.float32)
    with pytest.raises(WeightsError, match=r"fc2 \(bias\) has shape \(10,\); expected \(4096,\)"):
        describe_weights(str(path))


def test_npz_headers_are_read_without_data():
    # describe_weights reads headers only: an npz whose data is garbage after valid
    # headers still describes, which is what makes the launcher check cheap.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open("fc8_b.npy", "w") as member:
            np.lib.format.write_array(member, np.zeros(1000, np.float32))
    from vgg.weight_formats import npz_headers

    assert npz_headers(buffer, "mem") == {"fc8_b": ((1000,), np.dtype("float32"))}


def test_imagenet_offline_message(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    import keras.utils

    def refuse(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", refuse)
    with pytest.raises(WeightsError, match="pass its path instead"):
        describe_weights("imagenet")


# ---------------------------------------------------------------- row blocks


@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_large_kernels_stream_in_row_blocks(fmt, npz_path, h5_path, synth):
    from vgg.weight_formats import RowBlocks
    from vgg.weights import stream_weights

    layers, _ = stream_weights(npz_path if fmt == "npz" else h5_path, block_bytes=2**20)
    blocked = []
    for layer, kernel, bias in layers:
        want_kernel, want_bias = synth[layer]
        np.testing.assert_array_equal(bias, want_bias)
        if not isinstance(kernel, RowBlocks):
            np.testing.assert_array_equal(kernel, want_kernel)
            continue
        blocked.append(layer)
        covered = 0
        for start, block in kernel:
            assert start == covered and block.dtype == np.float32 and block.flags.c_contiguous
            # At most 1 MiB, or a single row where one row is larger (conv5: 3x512x512x4 B).
            assert block.nbytes <= 2**20 or len(block) == 1
            np.testing.assert_array_equal(block, want_kernel[start : start + len(block)])
            covered += len(block)
        assert covered == want_kernel.shape[0]
    # Over 1 MiB: conv3_1 is 3*3*128*256*4 = 1,179,648 B; conv2_2 is 3*3*128*128*4 = 589,824 B.
    assert blocked == [n for n in LAYER_NAMES if n.startswith(("conv3", "conv4", "conv5", "fc"))]


def _npy_member(archive: zipfile.ZipFile, name: str, array: np.ndarray, *, rows_kept: int | None = None):
    with archive.open(name, "w") as member:
        if rows_kept is None:
            np.lib.format.write_array(member, array)
            return
        header = {"descr": "<f4", "fortran_order": False, "shape": array.shape}
        np.lib.format.write_array_header_1_0(member, header)
        member.write(array[:rows_kept].tobytes())


def test_row_blocks_of_fortran_order_and_short_members():
    from vgg.weight_formats import RowBlocks, _npy_rows

    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _npy_member(archive, "f.npy", np.asfortranarray(values))
        _npy_member(archive, "big_endian.npy", values.astype(">f8"))
        _npy_member(archive, "short.npy", values, rows_kept=2)
    with zipfile.ZipFile(buffer) as archive:
        for name in ("f.npy", "big_endian.npy"):
            blocks = RowBlocks((4, 3), 1, _npy_rows(archive, name, "mem"), "mem")
            np.testing.assert_array_equal(np.asarray(blocks), values)
        read = _npy_rows(archive, "short.npy", "mem")
        np.testing.assert_array_equal(read(0, 2), values[:2])
        with pytest.raises(WeightsError, match=r"mem: short.npy ends early, after 2 of 4 rows"):
            read(2, 4)
        # A Fortran-order member is read whole, so any rows can be asked for; a C-order
        # one streams, so rows must come in order.
        np.testing.assert_array_equal(_npy_rows(archive, "f.npy", "mem")(2, 4), values[2:])
        with pytest.raises(ValueError, match="rows must be read in order"):
            _npy_rows(archive, "big_endian.npy", "mem")(1, 2)


def test_damaged_block_data_is_a_weights_error():
    from vgg.weight_formats import RowBlocks, _npy_rows

    values = np.arange(4096, dtype=np.float32).reshape(64, 64)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # stored, so the data bytes are in the file
        _npy_member(archive, "fc.npy", values)
    data = bytearray(buffer.getvalue())
    data[data.index(values[40].tobytes())] ^= 0xFF  # one byte of row 40: the CRC no longer matches
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        blocks = RowBlocks((64, 64), 16, _npy_rows(archive, "fc.npy", "w.npz"), "w.npz")
        message = r"w.npz: data could not be read \(Bad CRC-32 for file 'fc.npy'\)"
        with pytest.raises(WeightsError, match=message):
            list(blocks)
