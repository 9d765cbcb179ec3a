"""vgg.weights: sources, checks before loading, hashes, synthesized weights and the command line."""

from __future__ import annotations

import ast
import os
import struct
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from tests.conftest import REPO, SEED
from tests.modules import imported_modules, syntax_tree
from tests.vgg.weight_files import assert_same_weights, tiny_npz
from vgg import weights
from vgg.architecture import LAYER_NAMES
from vgg.weight_formats import RowBlocks
from vgg.weights import (
    UNTRAINED_WARNING,
    WeightsError,
    describe_weights,
    read_weights,
    save_weights,
    sha256_file,
    stream_weights,
    synth_weights,
)


def test_module_leaves_every_format_to_the_registry():
    # Formats are vgg.weight_formats' business: this module imports no file library and
    # compares nothing with a format's name, so a new format is one registry entry.
    assert not imported_modules(weights) & {"h5py", "zipfile"}
    names = {node.value for node in ast.walk(syntax_tree(weights)) if isinstance(node, ast.Constant)}
    assert not names & {"npz", "h5", ".npz", ".h5"}


def test_synth_is_deterministic_and_marked(synth, npz_path, h5_path):
    again = synth_weights(SEED)
    np.testing.assert_array_equal(again["fc8"][1], synth["fc8"][1])
    assert not np.array_equal(synth_weights(SEED + 1)["conv1_1"][0], synth["conv1_1"][0])
    # Non-zero biases: a loader that dropped them would change the outputs.
    assert all(np.abs(bias).min() > 0 for _, bias in synth.values())
    assert describe_weights(npz_path).untrained and describe_weights(h5_path).untrained


def test_untrained_warning_is_one_line():
    # Every tool prints it as one line (after "WARNING: "), so it must not wrap itself
    # (test_predict.py checks one tool's stderr has it as a line of its own).
    assert "UNTRAINED" in UNTRAINED_WARNING and "\n" not in UNTRAINED_WARNING


def test_format_is_sniffed_not_taken_from_the_name(synth, npz_path, h5_path, tmp_path):
    npz_info, h5_info = describe_weights(npz_path), describe_weights(h5_path)
    assert (npz_info.format, h5_info.format) == ("npz", "h5")
    # An h5 named .npz is still read as the h5 it is.
    misnamed = tmp_path / "really_h5.npz"
    misnamed.write_bytes(open(h5_path, "rb").read())
    weights, info = read_weights(str(misnamed))
    assert info.format == "h5" and info.name == "really_h5.npz"
    assert_same_weights(weights, synth)


def test_describe_reaches_each_format_check(tmp_path):
    # The checks themselves are tested in test_weight_formats.py; describe_weights, the
    # launcher's cheap check, must reach them through the registry.
    path = tiny_npz(tmp_path / "w.npz", drop=["fc7_b"])
    with pytest.raises(WeightsError, match=r"w.npz: missing key\(s\) \['fc7_b'\]"):
        describe_weights(path)
    path = tiny_npz(tmp_path / "v.npz")  # conv1_1_W has shape (1,)
    with pytest.raises(WeightsError, match=r"v.npz: conv1_1_W \(kernel\) has shape \(1,\)"):
        describe_weights(path)


def test_stream_weights_checks_the_whole_file_before_returning(npz_path, tmp_path):
    # A bad file raises when stream_weights is called, not when the layers are iterated
    # (that is, not halfway through filling a model): fc8_b is the last array read.
    bad = tiny_npz(tmp_path / "w.npz", drop=["fc8_b"])
    with pytest.raises(WeightsError, match=r"w.npz: missing key\(s\) \['fc8_b'\]"):
        stream_weights(bad)
    layers, info = stream_weights(npz_path, block_bytes=2**20)
    assert (info.format, info.name, info.untrained) == ("npz", "vgg16_untrained.npz", True)
    kinds = {layer: isinstance(kernel, RowBlocks) for layer, kernel, _ in layers}
    assert list(kinds) == list(LAYER_NAMES)
    # Kernels over block_bytes come in row blocks: fc6 (411 MB) does, conv1_1 (7 KB) does not.
    assert kinds["fc6"] and not kinds["conv1_1"]


def test_save_weights_refuses_an_unknown_format(synth, tmp_path):
    with pytest.raises(ValueError, match=r"^format must be one of \('npz', 'h5'\)\. Received: format='pt'$"):
        save_weights(synth, str(tmp_path / "w.pt"), format="pt")


@pytest.mark.slow
def test_cli_round_trip_npz_h5_npz(npz_path, tmp_path):
    h5, npz = str(tmp_path / "a.h5"), str(tmp_path / "b.npz")
    run = [sys.executable, "-m", "vgg.weights", "convert"]
    subprocess.run([*run, npz_path, h5], check=True, cwd=REPO, capture_output=True)
    subprocess.run([*run, h5, npz], check=True, cwd=REPO, capture_output=True)
    assert_same_weights(read_weights(npz)[0], read_weights(npz_path)[0])
    # Converting synthesized weights keeps the UNTRAINED label.
    assert describe_weights(h5).untrained and describe_weights(npz).untrained


def test_cli_convert_needs_a_format_it_can_tell(npz_path, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vgg.weights", "convert", npz_path, str(tmp_path / "w.bin")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1  # SystemExit with a message
    assert done.stderr.strip() == (
        f"error: cannot tell the format of {str(tmp_path / 'w.bin')!r} from its name; pass --format npz|h5"
    )


@pytest.mark.slow
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
    with pytest.raises(
        WeightsError, match=r"w.npz: not an npz \(zip\), an HDF5 or a Keras 3 \.keras \(zip\) file"
    ):
        describe_weights(str(tmp_path / "w.npz"))
    with pytest.raises(WeightsError, match="w.h5: not an npz"):
        describe_weights(str(tmp_path / "w.h5"))
    with pytest.raises(WeightsError, match="x.npz: not a readable npz"):
        describe_weights(str(tmp_path / "x.npz"))
    with pytest.raises(WeightsError, match="no such weights file"):
        describe_weights(str(tmp_path / "absent.npz"))
    with pytest.raises(WeightsError, match="is a directory"):
        describe_weights(str(tmp_path))


def test_imagenet_offline_message(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    import keras.utils

    def refuse(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", refuse)
    with pytest.raises(WeightsError, match="pass its path instead"):
        describe_weights("imagenet")


# ------------------------------------------------------------- damaged data


def member_data_offset(path, member: str) -> tuple[int, int]:
    """(offset, size) of a stored zip member's data in the file: after its local header."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)  # the local header's name and extra field lengths
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def flipped(source, target, offset: int) -> str:
    """A copy of source with one bit of the byte at offset flipped: damage no header shows."""
    data = bytearray(open(source, "rb").read())
    data[offset] ^= 0x01
    target.write_bytes(bytes(data))
    return str(target)


def test_a_bad_crc_in_an_npz_is_found_before_loading(npz_path, tmp_path):
    # One bit in the middle of fc7's kernel: every header, key and shape is still right, so
    # only reading the member to its end (its CRC-32) finds it. The file names the member.
    offset, size = member_data_offset(npz_path, "fc7_W.npy")
    bad = flipped(npz_path, tmp_path / "w.npz", offset + size // 2)
    with pytest.raises(WeightsError) as error:
        describe_weights(bad)
    assert str(error.value) == (
        f"{bad}: member 'fc7_W.npy' is damaged (Bad CRC-32 for file 'fc7_W.npy'); "
        "the file is corrupt: copy or download it again."
    )
    # The command line says it in one line, exit 2.
    done = subprocess.run(
        [sys.executable, "-m", "vgg.weights", "inspect", bad], cwd=REPO, capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (2, f"error: {error.value}\n")


def test_a_bad_crc_in_a_keras_archive(synth, tmp_path):
    # What Keras saves (`model.save`), with a bit flipped in model.weights.h5, which it
    # stores in the zip: that member's CRC-32 fails.
    from vgg.model import build_vgg16

    saved = str(tmp_path / "vgg16.keras")
    build_vgg16(weights=((layer, *arrays) for layer, arrays in synth.items())).save(saved)
    assert describe_weights(saved).format == "keras"
    offset, size = member_data_offset(saved, "model.weights.h5")
    bad = flipped(saved, tmp_path / "m.keras", offset + size // 2)
    with pytest.raises(WeightsError, match=r"m.keras: member 'model.weights.h5' is damaged \(Bad CRC-32"):
        describe_weights(bad)


def test_an_h5_checksum_is_checked_where_the_file_has_one(h5_path, tmp_path):
    # Keras writes no data checksums; an h5 with fletcher32 on its datasets (h5py's
    # `fletcher32=True`) has one per chunk, which HDF5 checks as every dataset is read.
    summed = str(tmp_path / "summed.h5")
    with h5py.File(h5_path, "r") as source, h5py.File(summed, "w") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        for layer in source:
            group = target.create_group(layer)
            for key, value in source[layer].attrs.items():
                group.attrs[key] = value
            for name, dataset in source[layer].items():
                group.create_dataset(name, data=dataset[()], fletcher32=True, chunks=dataset.shape)
    assert describe_weights(summed).format == "h5"
    with h5py.File(summed, "r") as root:
        dataset = root["fc2/fc2_W_1:0"]  # fc7's kernel, in one chunk
        assert dataset.fletcher32
        chunk = dataset.id.get_chunk_info(0)
    bad = flipped(summed, tmp_path / "bad.h5", chunk.byte_offset + chunk.size // 2)
    with pytest.raises(WeightsError) as error:
        describe_weights(bad)
    assert str(error.value).startswith(f"{bad}: dataset 'fc2/fc2_W_1:0' could not be read in full (")
    assert str(error.value).endswith("); the file is corrupt: copy or download it again.")
