"""Readers and writers for the VGG16 weight files users have: the seed's npz, Keras' h5, a Keras 3 `.keras`.

Each format is one `WeightFormat` in `FORMATS` (how to recognise, read, write and label
it); `vgg.weights` dispatches through that registry and never names a format itself.
All map to one in-memory form, `Weights`: our layer name -> (kernel, bias) as float32,
with conv1_1 taking RGB input. The npz is already RGB; Keras' h5 expects BGR input
("caffe" preprocessing), so its conv1_1 kernel has its input-channel axis reversed on
the way in and out. A `.keras` archive holds either this project's model (`vgg.model`,
RGB) or `keras.applications.VGG16` (BGR), told by its layer names; it is read, not
written. Everything is read as plain arrays: never pickles, never model code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import h5py
import numpy as np

from vgg.architecture import LAYER_NAMES, WEIGHT_SHAPES

Weights = dict[str, tuple[np.ndarray, np.ndarray]]

NPZ_MAGIC = b"PK\x03\x04"
H5_MAGIC = b"\x89HDF\r\n\x1a\n"

# Keras applications' layer names for the same network, in order.
KERAS_NAMES: dict[str, str] = {
    **{
        f"block{b}_conv{c}": f"conv{b}_{c}"
        for b, convs in enumerate((2, 2, 3, 3, 3), start=1)
        for c in range(1, convs + 1)
    },
    "fc1": "fc6",
    "fc2": "fc7",
    "predictions": "fc8",
}
OUR_TO_KERAS = {ours: keras for keras, ours in KERAS_NAMES.items()}
# The full layer list of keras.applications.VGG16, as the genuine file records it.
KERAS_LAYER_ORDER: tuple[str, ...] = (
    "input_1",
    "block1_conv1", "block1_conv2", "block1_pool",
    "block2_conv1", "block2_conv2", "block2_pool",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_pool",
    "block4_conv1", "block4_conv2", "block4_conv3", "block4_pool",
    "block5_conv1", "block5_conv2", "block5_conv3", "block5_pool",
    "flatten", "fc1", "fc2", "predictions",
)  # fmt: skip
H5_NAMINGS = ("keras1", "keras2", "keras3")
# Synthesized files carry this marker (an npz key / an h5 root attribute) so that every
# later use of them can say the labels are meaningless.
UNTRAINED_MARK = "untrained"
_UNTRAINED_NOTE = b"synthesized random weights; labels are meaningless"


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem."""


def swap_rgb_bgr(kernel: np.ndarray) -> np.ndarray:
    """Reverses the input-channel axis of conv1_1's HWIO kernel (RGB <-> BGR)."""
    return np.ascontiguousarray(kernel[:, :, ::-1, :])


class RowBlocks:
    """A large weight array handed out a block of rows at a time, straight from the file.

    fc6's kernel is 411 MB: read whole, it sits in memory beside the variable it is
    copied into. Read in blocks, the file costs one block on top of the model. Valid only
    until the iterator that yielded it moves on (the file is still open until then).
    """

    def __init__(self, shape: tuple[int, ...], rows: int, read: Callable[[int, int], np.ndarray], name: str):
        self.shape, self.rows_per_block, self._read = tuple(shape), max(1, rows), read
        self.dtype, self._name = np.dtype(np.float32), name

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (first row, float32 C-contiguous block) in order, covering every row once.

        Raises:
          WeightsError: the data cannot be read (the file ends early, a bad checksum).
        """
        for start in range(0, self.shape[0], self.rows_per_block):
            stop = min(start + self.rows_per_block, self.shape[0])
            try:
                block = self._read(start, stop)
            except (zipfile.BadZipFile, OSError, EOFError, KeyError) as error:
                raise WeightsError(f"{self._name}: data could not be read ({error}).") from error
            yield start, _float32(block)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.empty(self.shape, np.float32)
        for start, block in self:
            whole[start : start + len(block)] = block
        return whole if dtype is None else whole.astype(dtype)


# (our layer name, kernel, bias), one layer at a time; large kernels may come as RowBlocks.
Layer = tuple[str, np.ndarray | RowBlocks, np.ndarray]


def _rows_per_block(shape: tuple[int, ...], block_bytes: int | None) -> int | None:
    """Rows per block for an array of this shape, or None to read it whole."""
    row_bytes = 4 * math.prod(shape[1:])
    if block_bytes is None or len(shape) < 2 or row_bytes * shape[0] <= block_bytes:
        return None
    return block_bytes // row_bytes


# ---------------------------------------------------------------------------- npz


def _npy_header(member: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the start of a .npy stream, leaving it at the data."""
    if np.lib.format.read_magic(member) == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    return np.lib.format.read_array_header_2_0(member)


def npz_headers(source: str | BinaryIO, name: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Key -> (shape, dtype) of every array in an npz, read from headers only (no data)."""
    headers = {}
    try:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                key = info.filename.removesuffix(".npy")
                with archive.open(info) as member:
                    shape, _, dtype = _npy_header(member)
                headers[key] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise WeightsError(f"{name}: not a readable npz file ({error}).") from error
    return headers


def iter_npz(source: str | BinaryIO, name: str, *, block_bytes: int | None = None) -> Iterator[Layer]:
    """Yields (layer, kernel, bias) from the seed's npz, one layer at a time.

    Keys, dtypes and shapes are all checked from the headers before the first array is
    read, so a bad file fails before anything is loaded, and memory holds one layer.
    With block_bytes, kernels larger than that come as `RowBlocks` instead of arrays.
    """
    headers = npz_headers(source, name)
    headers.pop(UNTRAINED_MARK, None)
    expected = {f"{layer}_{part}" for layer in LAYER_NAMES for part in "Wb"}
    _check_keys(name, set(headers), expected, "key")
    for key, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise WeightsError(
                f"{name}: array {key!r} is an object array, which only pickle can load; "
                "weights are read as plain numbers only, never unpickled."
            )
    for layer in LAYER_NAMES:
        for part, shape in zip("Wb", WEIGHT_SHAPES[layer]):
            _check_array(name, f"{layer}_{part}", part, *headers[f"{layer}_{part}"], shape)
    if not isinstance(source, str):
        source.seek(0)
    try:
        with np.load(source, allow_pickle=False) as archive:
            for layer in LAYER_NAMES:
                key = f"{layer}_W"
                rows = _rows_per_block(headers[key][0], block_bytes)
                if rows is None:
                    kernel = _float32(archive[key])
                else:
                    read = _npy_rows(archive.zip, f"{key}.npy", name)
                    kernel = RowBlocks(headers[key][0], rows, read, name)
                yield layer, kernel, _float32(archive[f"{layer}_b"])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise WeightsError(f"{name}: npz data could not be read ({error}).") from error


def _npy_rows(members: zipfile.ZipFile, member: str, name: str) -> Callable[[int, int], np.ndarray]:
    """Reads rows [start, stop) of a C-order .npy inside a zip, in order, without the rest."""
    handle = members.open(member)
    shape, fortran_order, dtype = _npy_header(handle)
    if fortran_order:  # rows are not contiguous in the file: read it whole, once
        handle.close()
        with members.open(member) as again:
            whole = np.lib.format.read_array(again, allow_pickle=False)
        return lambda start, stop: whole[start:stop]
    row_bytes = dtype.itemsize * math.prod(shape[1:])
    position = 0

    def read(start: int, stop: int) -> np.ndarray:
        nonlocal position
        if start != position:
            raise ValueError(f"{member}: rows must be read in order (asked {start}, at {position})")
        data = handle.read((stop - start) * row_bytes)
        if len(data) != (stop - start) * row_bytes:
            rows = position + len(data) // row_bytes
            raise WeightsError(f"{name}: {member} ends early, after {rows} of {shape[0]} rows.")
        position = stop
        if stop == shape[0]:
            handle.close()
        return np.frombuffer(data, dtype).reshape((stop - start, *shape[1:]))

    return read


def write_npz(weights: Weights, target: str | BinaryIO, *, naming: str | None = None) -> None:
    """Writes the seed's npz layout (uncompressed, as the original file is).

    naming is accepted so that every format's writer takes the same arguments, and
    ignored: the seed's npz has one set of key names (conv1_1_W ... fc8_b).
    """
    arrays = {}
    for layer in LAYER_NAMES:
        kernel, bias = weights[layer]
        arrays[f"{layer}_W"], arrays[f"{layer}_b"] = kernel, bias
    if isinstance(target, str):
        with open(target, "wb") as handle:  # np.savez would append ".npz" to a bare name
            np.savez(handle, **arrays)
    else:
        np.savez(target, **arrays)


def npz_is_untrained(path: str) -> bool:
    """Whether an npz holds the UNTRAINED mark (an extra key), from its headers only."""
    return UNTRAINED_MARK in npz_headers(path, path)


def verify_zip(path: str, name: str, *, block_bytes: int = 1 << 22) -> None:
    """Reads every member of a zip (an npz, a `.keras`) to its end, which checks each one's CRC-32.

    Raises:
      WeightsError: naming the member that fails (its CRC, its compressed stream, or the
        file ends inside it).
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise WeightsError(f"{name}: not a readable zip file ({error}).") from error
    with archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as member:
                    while member.read(block_bytes):
                        pass
            except (
                zipfile.BadZipFile,
                zlib.error,
                OSError,
                EOFError,
                ValueError,
                NotImplementedError,
            ) as error:
                raise WeightsError(
                    f"{name}: member {info.filename!r} is damaged ({error}); the file is corrupt: "
                    "copy or download it again."
                ) from error


def mark_npz_untrained(path: str) -> None:
    """Adds the UNTRAINED mark to an npz: a one-byte array under the key `UNTRAINED_MARK`."""
    with zipfile.ZipFile(path, "a") as archive:
        with archive.open(UNTRAINED_MARK + ".npy", "w") as member:
            np.lib.format.write_array(member, np.array(1, dtype=np.uint8))


# ----------------------------------------------------------------------------- h5


def _attribute_list(group: h5py.Group, attr: str) -> list[str]:
    """Reads a list attribute the way Keras' legacy loader does, chunked attributes included."""
    if attr in group.attrs:
        values = list(group.attrs[attr])
    else:
        values, chunk = [], 0
        while f"{attr}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{attr}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if hasattr(v, "decode") else str(v) for v in values]


def _h5_arrays(root: h5py.File, name: str) -> Iterator[tuple[str, list[h5py.Dataset]]]:
    """Yields (Keras layer name, datasets in saved order) for each layer that has weights."""
    if "layer_names" not in root.attrs and "model_weights" in root:
        config = root.attrs.get("model_config", b"")
        config = config.decode("utf8") if hasattr(config, "decode") else str(config)
        if '"Lambda"' in config or "'Lambda'" in config:
            raise WeightsError(
                f"{name}: holds a whole Keras model with Lambda layers (Python code). "
                "Only weight arrays are ever read; save a weights-only file instead "
                "(model.save_weights) or pass the npz."
            )
        root = root["model_weights"]
    if "layer_names" in root.attrs or any(a.startswith("layer_names") for a in root.attrs):
        # Keras 1/2 and Keras 3's legacy format: ordered names in attributes.
        for layer in _attribute_list(root, "layer_names"):
            if layer not in root:
                raise WeightsError(f"{name}: layer {layer!r} is listed but has no group.")
            group = root[layer]
            weight_names = _attribute_list(group, "weight_names")
            try:
                datasets = [group[w] for w in weight_names]
            except KeyError as error:
                raise WeightsError(f"{name}: layer {layer!r} lacks a listed weight ({error}).") from error
            if datasets:
                yield layer, datasets
    else:
        hint = (
            " It looks like a Keras 3 '.weights.h5', which keys layers by creation order "
            "(conv2d_7), not by name; save with the legacy layout or pass the npz."
            if "layers" in root
            else ""
        )
        raise WeightsError(f"{name}: an HDF5 file but not Keras weights (no 'layer_names' attribute).{hint}")


def iter_h5(source: str | BinaryIO, name: str, *, block_bytes: int | None = None) -> Iterator[Layer]:
    """Yields (our layer, kernel, bias) from Keras' h5, checked in full before the first read.

    Follows Keras' legacy loader: `layer_names` and each layer's `weight_names`
    attributes, in order, so files written by Keras 1/2 (`block1_conv1_W_1:0`) and by
    Keras 3's legacy writer (`block1_conv1/kernel`) both load. conv1_1 comes out RGB.
    With block_bytes, kernels larger than that come as `RowBlocks` instead of arrays.
    """
    try:
        with h5py.File(source, "r") as root:
            found = dict(_h5_arrays(root, name))
            yield from _dataset_layers(found, KERAS_NAMES, name, block_bytes, bgr=True)
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise WeightsError(f"{name}: HDF5 data could not be read ({error}).") from error


def _dataset_layers(
    found: dict[str, list[h5py.Dataset]],
    to_ours: dict[str, str],
    name: str,
    block_bytes: int | None,
    *,
    bgr: bool,
) -> Iterator[Layer]:
    """(our layer, kernel, bias) from HDF5 datasets keyed by the file's layer names.

    Every layer's presence, count of weights, shapes and dtypes are checked before the
    first is yielded; `to_ours` maps the file's names to ours; `bgr`: conv1_1 expects BGR.
    """
    for file_layer, datasets in found.items():
        if file_layer in to_ours and len(datasets) != 2:
            raise WeightsError(
                f"{name}: layer {file_layer!r} has {len(datasets)} weights; expected 2 (kernel, bias)."
            )
    _check_keys(name, set(found), set(to_ours), "layer")
    for file_layer, datasets in found.items():
        shapes = WEIGHT_SHAPES[to_ours[file_layer]]
        for part, dataset, shape in zip("Wb", datasets, shapes):
            _check_array(name, file_layer, part, tuple(dataset.shape), dataset.dtype, shape)
    from_ours = {ours: file_layer for file_layer, ours in to_ours.items()}
    for layer in LAYER_NAMES:
        kernel_data, bias_data = found[from_ours[layer]]
        rows = _rows_per_block(kernel_data.shape, block_bytes)
        if layer == "conv1_1":  # tiny, and read whole in case its channel axis needs reversing
            kernel = _float32(kernel_data[()])
            kernel = swap_rgb_bgr(kernel) if bgr else kernel
        elif rows is None:
            kernel = _float32(kernel_data[()])
        else:
            kernel = RowBlocks(kernel_data.shape, rows, lambda a, b, d=kernel_data: d[a:b], name)
        yield layer, kernel, _float32(bias_data[()])


def write_h5(weights: Weights, target: str | BinaryIO, *, naming: str = "keras2") -> None:
    """Writes Keras' legacy weights layout (what `load_weights(..h5)` and Keras' VGG16 read).

    naming picks the weight names: "keras1" (`block1_conv1_W_1:0`, as the genuine
    file), "keras2" (`block1_conv1/kernel:0`) or "keras3" (`block1_conv1/kernel`).
    """
    if naming not in H5_NAMINGS:
        raise ValueError(f"naming must be one of {H5_NAMINGS}. Received: naming={naming!r}")
    versions = {"keras1": "1.2.2", "keras2": "2.2.4", "keras3": "3.0.0"}
    with h5py.File(target, "w") as root:
        root.attrs["layer_names"] = [n.encode("utf8") for n in KERAS_LAYER_ORDER]
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = versions[naming].encode("utf8")
        for keras_layer in KERAS_LAYER_ORDER:
            group = root.create_group(keras_layer)
            ours = KERAS_NAMES.get(keras_layer)
            if ours is None:
                group.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            kernel, bias = weights[ours]
            if ours == "conv1_1":
                kernel = swap_rgb_bgr(kernel)
            if naming == "keras1":
                names = [f"{keras_layer}_W_1:0", f"{keras_layer}_b_1:0"]
            elif naming == "keras2":
                names = [f"{keras_layer}/kernel:0", f"{keras_layer}/bias:0"]
            else:
                names = [f"{keras_layer}/kernel", f"{keras_layer}/bias"]
            group.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for weight_name, value in zip(names, (kernel, bias)):
                group.create_dataset(weight_name, data=value)


def verify_h5(path: str, name: str, *, block_bytes: int = 1 << 24) -> None:
    """Reads every dataset of an HDF5 file in full, a block of rows at a time.

    HDF5 checks its own checksums as it reads: those of the metadata in newer files, and a
    dataset's fletcher32 filter where the file has one. Keras writes no data checksums,
    so in its files this finds what cannot be read (a truncated file, broken chunks), not
    a changed byte of data.

    Raises:
      WeightsError: naming the dataset that cannot be read.
    """
    try:
        root = h5py.File(path, "r")
    except (OSError, ValueError) as error:
        raise WeightsError(f"{name}: HDF5 data could not be read ({error}).") from error
    with root:
        keys: list[str] = []
        try:
            root.visititems(lambda key, item: keys.append(key) if isinstance(item, h5py.Dataset) else None)
        except (OSError, KeyError, ValueError, RuntimeError) as error:
            raise WeightsError(f"{name}: HDF5 structure could not be read ({error}).") from error
        for key in keys:
            try:
                dataset = root[key]
                # Each block is read (HDF5 checks it as it reads) and dropped.
                if not dataset.shape:
                    dataset[()]
                    continue
                row_bytes = max(1, dataset.dtype.itemsize * math.prod(dataset.shape[1:]))
                rows = max(1, block_bytes // row_bytes)
                for start in range(0, dataset.shape[0], rows):
                    dataset[start : start + rows]
            except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
                raise WeightsError(
                    f"{name}: dataset {key!r} could not be read in full ({error}); the file is corrupt: "
                    "copy or download it again."
                ) from error


def h5_is_untrained(path: str) -> bool:
    """Whether an h5 holds the UNTRAINED mark (a root attribute)."""
    with h5py.File(path, "r") as root:
        return UNTRAINED_MARK in root.attrs


def mark_h5_untrained(path: str) -> None:
    """Adds the UNTRAINED mark to an h5: a root attribute named `UNTRAINED_MARK`."""
    with h5py.File(path, "a") as root:
        root.attrs[UNTRAINED_MARK] = _UNTRAINED_NOTE


# ------------------------------------------------------------------------- .keras

# What tells a Keras 3 archive (`model.save("m.keras")`) from other zips, such as an npz.
KERAS_ARCHIVE_MEMBERS = ("config.json", "metadata.json")
KERAS_WEIGHTS_MEMBER = "model.weights.h5"
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature; name and extra field lengths at 26


def is_keras_archive(source: str | BinaryIO) -> bool:
    """Whether a file is a zip holding Keras 3's config.json and metadata.json (read: the listing)."""
    try:
        with zipfile.ZipFile(source) as archive:
            return set(KERAS_ARCHIVE_MEMBERS) <= set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False
    finally:
        if not isinstance(source, str):
            source.seek(0)


def _snake_case(class_name: str) -> str:
    """keras.src.utils.naming.to_snake_case: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_layer_groups(config: dict, name: str) -> dict[str, str]:
    """Layer name -> its group in model.weights.h5, as Keras 3's saver names the groups.

    The saver keys a model's layers by class, numbered in the order of `model.layers`
    (`layers/conv2d`, `layers/conv2d_1`, ...), not by their names, which it calls not
    reproducible (keras/src/saving/saving_lib.py); config.json lists them in that order.
    """
    layers = config.get("config", {}).get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        raise WeightsError(f"{name}: its config.json lists no layers; not a saved Keras model of layers.")
    groups, used = {}, {}
    for layer in layers:
        key = _snake_case(layer["class_name"])
        used[key] = used.get(key, -1) + 1
        groups[layer["config"]["name"]] = f"layers/{key}" + (f"_{used[key]}" if used[key] else "")
    return groups


def _keras_arrays(root: h5py.File, groups: dict[str, str], name: str) -> dict[str, list[h5py.Dataset]]:
    """Layer name -> its variables in saved order, for each layer of the model that has any."""
    found = {}
    for layer, group in groups.items():
        variables = root.get(f"{group}/vars")
        if variables is None:
            continue  # a layer without variables (pooling, flatten, this project's Preprocess)
        saved_as = variables.attrs.get("name")  # newer Keras also records the layer's name
        saved_as = saved_as.decode("utf8") if isinstance(saved_as, bytes) else saved_as
        if saved_as is not None and saved_as != layer:
            raise WeightsError(
                f"{name}: config.json and {KERAS_WEIGHTS_MEMBER} disagree: {group} holds layer "
                f"{saved_as!r}, expected {layer!r}."
            )
        datasets = [variables[key] for key in sorted(variables, key=int)]
        if datasets:
            found[layer] = datasets
    return found


class _Slice(io.RawIOBase):
    """Bytes [start, start + size) of a seekable file as a file of their own: a stored zip member.

    h5py reads a file by seeking all over it; through zipfile, every backward seek in a
    member restarts it from its first byte.
    """

    def __init__(self, handle: BinaryIO, start: int, size: int):
        self._handle, self._start, self._size, self._at = handle, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = max(0, base + offset)
        return self._at

    def readinto(self, buffer) -> int:
        wanted = max(0, min(len(buffer), self._size - self._at))
        if not wanted:
            return 0
        self._handle.seek(self._start + self._at)
        got = self._handle.readinto(memoryview(buffer)[:wanted]) or 0
        self._at += got
        return got


@contextlib.contextmanager
def _member_file(source: str | BinaryIO, archive: zipfile.ZipFile, member: zipfile.ZipInfo):
    """A seekable file of one zip member: a view of the archive where it is stored, else a copy."""
    if member.compress_type != zipfile.ZIP_STORED:  # Keras stores it; a re-zipped file may not
        with tempfile.TemporaryFile() as copy, archive.open(member) as data:
            shutil.copyfileobj(data, copy, 1 << 20)
            copy.seek(0)
            yield copy
        return
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(open(source, "rb")) if isinstance(source, str) else source
        handle.seek(member.header_offset)
        signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(handle.read(_ZIP_LOCAL_HEADER.size))
        if signature != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"no local header for {member.filename} at byte {member.header_offset}")
        start = member.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length
        yield _Slice(handle, start, member.file_size)


def iter_keras(source: str | BinaryIO, name: str, *, block_bytes: int | None = None) -> Iterator[Layer]:
    """Yields (our layer, kernel, bias) from a Keras 3 `.keras` archive, checked in full first.

    The weights are model.weights.h5 inside the zip, read in place (Keras stores it
    uncompressed) and mapped to layers through config.json. A model with this project's
    layer names (`vgg.model`: conv1_1 ... fc8) is RGB; one with keras.applications'
    (block1_conv1 ... predictions) is BGR, as its h5 is. Only the arrays are read: the
    config is never turned into a model, so no layer code runs.
    """
    try:
        with zipfile.ZipFile(source) as archive:
            members = set(archive.namelist())
            if KERAS_WEIGHTS_MEMBER not in members:
                sharded = (
                    " (sharded weights: save the model without max_shard_size)"
                    if any(m.endswith(".json") and m.startswith("model.weights") for m in members)
                    else ""
                )
                raise WeightsError(f"{name}: a Keras archive without {KERAS_WEIGHTS_MEMBER}{sharded}.")
            groups = _keras_layer_groups(json.loads(archive.read("config.json")), name)
            ours = set(LAYER_NAMES) & set(groups)
            to_ours = {layer: layer for layer in LAYER_NAMES} if ours else KERAS_NAMES
            member = archive.getinfo(KERAS_WEIGHTS_MEMBER)
            with _member_file(source, archive, member) as weights, h5py.File(weights, "r") as root:
                found = _keras_arrays(root, groups, name)
                yield from _dataset_layers(found, to_ours, name, block_bytes, bgr=not ours)
    except WeightsError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError, TypeError, AttributeError) as error:
        raise WeightsError(f"{name}: not a readable Keras archive ({error}).") from error


def _not_marked(path: str) -> bool:
    """A `.keras` file never carries the UNTRAINED mark: this package does not write one."""
    return False


# ------------------------------------------------------------------------- checks


def _check_keys(name: str, found: set[str], expected: set[str], what: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing:
        hint = " (a no-top file? labelling needs fc6-fc8)" if "fc1" in missing or "fc6_W" in missing else ""
        raise WeightsError(f"{name}: missing {what}(s) {missing}{hint}.")
    if unexpected:
        raise WeightsError(f"{name}: unexpected {what}(s) {unexpected}; not VGG16 weights?")


def _check_array(
    name: str, key: str, part: str, shape: tuple[int, ...], dtype: np.dtype, want: tuple[int, ...]
) -> None:
    if tuple(shape) != want:
        what = "kernel" if part == "W" else "bias"
        raise WeightsError(f"{name}: {key} ({what}) has shape {tuple(shape)}; expected {want}.")
    if np.dtype(dtype).kind not in "fiu":
        raise WeightsError(f"{name}: {key} has dtype {dtype}; expected numbers.")


def _float32(value) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=np.float32)


def check_weights(weights: Weights, name: str) -> Weights:
    """Checks every layer is present with its exact shapes; returns float32 C-contiguous arrays."""
    checked: Weights = {}
    for layer in LAYER_NAMES:
        if layer not in weights:
            raise WeightsError(f"{name}: missing layer {layer!r}.")
        arrays = []
        for part, given, shape in zip("Wb", weights[layer], WEIGHT_SHAPES[layer]):
            value = np.asarray(given)
            _check_array(name, layer, part, value.shape, value.dtype, shape)
            arrays.append(_float32(value))
        checked[layer] = (arrays[0], arrays[1])
    return checked


# ----------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    """One weights file format: how to recognise it, read it, write it and label it.

    Attributes:
      name: the format's name in `WeightsInfo.format` and on the command line.
      title: what its files are, for messages ("an npz (zip)").
      magic: the bytes every file of the format starts with; the format is told by
        them, not by the file's name.
      extensions: file name endings (lower case) that name the format, for a file
        about to be written.
      layers: (source, name, *, block_bytes) -> (layer, kernel, bias) per layer, after
        the whole file's keys, shapes and dtypes are checked.
      write: (weights, target, *, naming) -> None; naming picks the weight names where
        the format has several (h5; see `H5_NAMINGS`). None: read, never written.
      is_untrained: path -> whether the file carries the UNTRAINED mark.
      mark_untrained: path -> None; adds that mark to a file `write` wrote.
      verify: (path, name) -> None; reads all of the file's data once, so that its own
        checks (zip CRCs, HDF5 checksums where present) find damage before anything loads.
      claims: for a format whose magic another shares (a `.keras` and an npz are both
        zips): source -> whether the file is this one, from a look inside it. The format
        sharing the magic without `claims` takes the files no other claims.
    """

    name: str
    title: str
    magic: bytes
    extensions: tuple[str, ...]
    layers: Callable[..., Iterator[Layer]]
    write: Callable[..., None] | None
    is_untrained: Callable[[str], bool]
    mark_untrained: Callable[[str], None] | None
    verify: Callable[[str, str], None]
    claims: Callable[[str | BinaryIO], bool] | None = None

    def read(self, source: str | BinaryIO, name: str) -> Weights:
        """Reads and checks a whole file into memory (RGB conv1_1, float32)."""
        return {layer: (kernel, bias) for layer, kernel, bias in self.layers(source, name)}


FORMATS: dict[str, WeightFormat] = {
    fmt.name: fmt
    for fmt in (
        WeightFormat(
            name="npz",
            title="an npz (zip)",
            magic=NPZ_MAGIC,
            extensions=(".npz",),
            layers=iter_npz,
            write=write_npz,
            is_untrained=npz_is_untrained,
            mark_untrained=mark_npz_untrained,
            verify=verify_zip,
        ),
        WeightFormat(
            name="h5",
            title="an HDF5",
            magic=H5_MAGIC,
            extensions=(".h5", ".hdf5"),
            layers=iter_h5,
            write=write_h5,
            is_untrained=h5_is_untrained,
            mark_untrained=mark_h5_untrained,
            verify=verify_h5,
        ),
        WeightFormat(
            name="keras",
            title="a Keras 3 .keras (zip)",
            magic=NPZ_MAGIC,  # a zip, told from an npz by its members (claims)
            extensions=(".keras",),
            layers=iter_keras,
            write=None,  # a .keras is a whole model: Keras writes it (model.save), not this package
            is_untrained=_not_marked,
            mark_untrained=None,
            verify=verify_zip,  # every member's CRC, model.weights.h5 included
            claims=is_keras_archive,
        ),
    )
}
# The formats this package writes (synth, convert); the others it only reads.
WRITABLE_FORMATS: tuple[str, ...] = tuple(name for name, fmt in FORMATS.items() if fmt.write is not None)
# Bytes to read from the start of a file to tell its format.
SNIFF_BYTES = max(len(fmt.magic) for fmt in FORMATS.values())


def sniff_format(head: bytes, source: str | BinaryIO | None = None) -> WeightFormat | None:
    """The format whose magic `head` (a file's first SNIFF_BYTES bytes) starts with, or None.

    Where formats share the magic (the zips: an npz, a `.keras`), the one that claims the
    file `source` (its path or open file) is; without source, or claimed by none, the one
    that makes no claims.
    """
    matching = [fmt for fmt in FORMATS.values() if head.startswith(fmt.magic)]
    if source is not None:
        claimed = next((fmt for fmt in matching if fmt.claims is not None and fmt.claims(source)), None)
        if claimed is not None:
            return claimed
    return next((fmt for fmt in matching if fmt.claims is None), None)


def format_for_name(path: str) -> WeightFormat | None:
    """The format a file name's extension names (for a file about to be written), or None."""
    lower = path.lower()
    return next((fmt for fmt in FORMATS.values() if lower.endswith(fmt.extensions)), None)
