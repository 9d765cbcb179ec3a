"""vgg.weight_formats: the format registry, each format's reader and writer, an error for every bad file."""

from __future__ import annotations

import io
import zipfile

import h5py
import numpy as np
import pytest

from tests.vgg.weight_files import assert_same_weights, tiny_npz
from vgg.architecture import LAYER_NAMES
from vgg.weight_formats import (
    FORMATS,
    SNIFF_BYTES,
    WRITABLE_FORMATS,
    RowBlocks,
    WeightsError,
    _npy_rows,
    check_weights,
    format_for_name,
    npz_headers,
    sniff_format,
)

NPZ, H5, KERAS = FORMATS["npz"], FORMATS["h5"], FORMATS["keras"]


# ------------------------------------------------------------------ the registry


def test_what_the_registry_derives():
    # SNIFF_BYTES is the longest magic: HDF5's 8-byte signature (\x89HDF\r\n\x1a\n), not a zip's
    # 4-byte local file header (PK\x03\x04): a shorter head could never start with HDF5's.
    assert SNIFF_BYTES == 8
    # The formats with a writer: a .keras is read, never written (Keras writes whole models).
    assert WRITABLE_FORMATS == ("npz", "h5")


def test_format_is_told_by_the_first_bytes(npz_path, h5_path):
    for path, fmt in ((npz_path, NPZ), (h5_path, H5)):
        with open(path, "rb") as handle:
            assert sniff_format(handle.read(SNIFF_BYTES)) is fmt
    assert sniff_format(b"<html>40") is None
    assert sniff_format(b"") is None
    assert sniff_format(b"\x89HDF\r\n") is None  # a file shorter than the signature


def test_format_for_a_file_name():
    assert format_for_name("out/vgg16_weights.npz") is NPZ
    assert format_for_name("W.H5") is H5  # extensions compare in lower case
    assert format_for_name("w.hdf5") is H5
    # A Keras 3 .keras is a zip (config.json, metadata.json, model.weights.h5), not an HDF5.
    assert format_for_name("w.keras") is KERAS
    assert format_for_name("weights.bin") is None
    assert format_for_name("npz") is None  # a name, not an extension


# ------------------------------------------------------------- round trips


def test_npz_and_h5_hold_the_same_network(synth, npz_path, h5_path):
    assert_same_weights(NPZ.read(npz_path, npz_path), synth)
    assert_same_weights(H5.read(h5_path, h5_path), synth)  # the h5 stores conv1_1 BGR; reading flips it
    with h5py.File(h5_path) as root:
        stored = root["block1_conv1"]["block1_conv1_W_1:0"][()]
    np.testing.assert_array_equal(stored, synth["conv1_1"][0][:, :, ::-1, :])


@pytest.mark.parametrize(
    ("naming", "kernel_name"),
    [("keras1", "fc1_W_1:0"), ("keras2", "fc1/kernel:0"), ("keras3", "fc1/kernel")],
)
def test_h5_naming_styles_round_trip(naming, kernel_name, synth, tmp_path):
    path = str(tmp_path / "w.h5")
    H5.write(synth, path, naming=naming)
    with h5py.File(path) as root:
        assert str(root["fc1"].attrs["weight_names"][0]) == kernel_name  # h5py reads it as str
    assert_same_weights(H5.read(path, path), synth)


def test_npz_writer_takes_and_ignores_naming(synth, tmp_path):
    # Every format's writer takes the same arguments; the seed's npz has one set of keys.
    path = str(tmp_path / "w.npz")
    NPZ.write(synth, path, naming="keras1")
    keys = sorted(npz_headers(path, path))
    assert keys == sorted(f"{layer}_{part}" for layer in LAYER_NAMES for part in "Wb")


@pytest.mark.parametrize("name", ["npz", "h5"])
def test_untrained_mark(name, synth, tmp_path):
    fmt = FORMATS[name]
    path = str(tmp_path / f"w.{name}")
    fmt.write(synth, path, naming="keras2")
    assert not fmt.is_untrained(path)
    fmt.mark_untrained(path)
    assert fmt.is_untrained(path)
    assert_same_weights(fmt.read(path, path), synth)  # the mark is not read as a layer


# ------------------------------------------------------------------ bad npz files


def test_missing_key(tmp_path):
    path = tiny_npz(tmp_path / "w.npz", drop=["fc7_b"])
    with pytest.raises(WeightsError, match=r"w.npz: missing key\(s\) \['fc7_b'\]"):
        NPZ.read(path, path)


def test_unexpected_key_is_not_ignored(tmp_path):
    path = tiny_npz(tmp_path / "w.npz", extra={"fc9_W": np.zeros(2)})
    with pytest.raises(WeightsError, match=r"unexpected key\(s\) \['fc9_W'\]"):
        NPZ.read(path, path)


def test_wrong_shape(tmp_path):
    path = tiny_npz(tmp_path / "w.npz")  # conv1_1_W has shape (1,)
    message = r"conv1_1_W \(kernel\) has shape \(1,\); expected \(3, 3, 3, 64\)"
    with pytest.raises(WeightsError, match=message):
        NPZ.read(path, path)


def test_object_array_is_never_unpickled(tmp_path):
    path = tiny_npz(tmp_path / "w.npz", objects=["fc8_b"])
    with pytest.raises(WeightsError, match="'fc8_b' is an object array, which only pickle can load"):
        NPZ.read(path, path)


def test_npz_headers_are_read_without_data():
    # The headers alone give every key, shape and dtype: an npz whose data is garbage
    # after valid headers still lists, which is what makes the launcher's check cheap.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open("fc8_b.npy", "w") as member:
            np.lib.format.write_array(member, np.zeros(1000, np.float32))
    assert npz_headers(buffer, "mem") == {"fc8_b": ((1000,), np.dtype("float32"))}


def test_not_a_readable_npz(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"PK\x03\x04junk")  # the zip magic, then nothing a zip reader accepts
    with pytest.raises(WeightsError, match="x.npz: not a readable npz"):
        NPZ.read(str(path), str(path))


# ------------------------------------------------------------------- bad h5 files


def test_h5_errors(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as root:
        root["x"] = np.zeros(3)
    with pytest.raises(WeightsError, match="not Keras weights"):
        H5.read(str(plain), str(plain))

    notop = tmp_path / "notop.h5"
    with h5py.File(notop, "w") as root:
        root.attrs["layer_names"] = [b"block1_conv1"]
        group = root.create_group("block1_conv1")
        group.attrs["weight_names"] = [b"block1_conv1/kernel:0", b"block1_conv1/bias:0"]
        group["block1_conv1/kernel:0"] = np.zeros((3, 3, 3, 64), np.float32)
        group["block1_conv1/bias:0"] = np.zeros(64, np.float32)
    with pytest.raises(WeightsError, match=r"missing layer\(s\) .*'fc1'.*no-top file"):
        H5.read(str(notop), str(notop))

    model = tmp_path / "model.h5"
    with h5py.File(model, "w") as root:
        root.attrs["model_config"] = (
            b'{"class_name": "Functional", "config": {"layers": [{"class_name": "Lambda"}]}}'
        )
        root.create_group("model_weights").attrs["layer_names"] = []
    with pytest.raises(WeightsError, match="whole Keras model with Lambda layers"):
        H5.read(str(model), str(model))


def test_bad_h5_shape_names_the_keras_layer(synth, tmp_path):
    path = str(tmp_path / "w.h5")
    H5.write(synth, path, naming="keras2")
    with h5py.File(path, "a") as root:
        del root["fc2"]["fc2/bias:0"]
        root["fc2"]["fc2/bias:0"] = np.zeros(10, np.float32)
    with pytest.raises(WeightsError, match=r"fc2 \(bias\) has shape \(10,\); expected \(4096,\)"):
        H5.read(path, path)


# ------------------------------------------------------------- weights in memory


def test_check_weights(synth):
    checked = check_weights({layer: (k.astype(np.float64), b) for layer, (k, b) in synth.items()}, "mem")
    assert checked["fc8"][0].dtype == np.float32  # writers get float32, whatever came in
    assert_same_weights(checked, synth)
    with pytest.raises(WeightsError, match=r"^mem: missing layer 'fc8'\.$"):
        check_weights({layer: synth[layer] for layer in LAYER_NAMES[:-1]}, "mem")
    wrong = {**synth, "fc7": (synth["fc7"][0][:10], synth["fc7"][1])}
    message = r"^mem: fc7 \(kernel\) has shape \(10, 4096\); expected \(4096, 4096\)\.$"
    with pytest.raises(WeightsError, match=message):
        check_weights(wrong, "mem")


# ---------------------------------------------------------------- row blocks


@pytest.mark.parametrize("name", ["npz", "h5"])
def test_large_kernels_stream_in_row_blocks(name, npz_path, h5_path, synth):
    path = npz_path if name == "npz" else h5_path
    blocked = []
    for layer, kernel, bias in FORMATS[name].layers(path, path, block_bytes=2**20):
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
