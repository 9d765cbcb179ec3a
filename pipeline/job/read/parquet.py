"""Parquet shards: one image per row, a binary column or a struct's 'bytes' field (img2dataset, HF).

The three things every format module has: `read` (stream the rows' images, one batch of
rows at a time), `field_problem` (the launcher's look at the schema), `looks_like` (the
PAR1 magic).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.job.read.members import Failure, Member, Uris, either, key_value, one_line, too_large

# Without --image_field, the first of these a Parquet file has as a column (img2dataset,
# Hugging Face datasets, others).
IMAGE_FIELDS = ("jpg", "image", "image_bytes")
_ROWS = 32  # rows per batch: a batch holds at most this many images
_BUFFER = 1 << 20  # pages are read through a 1 MiB buffer, not a column chunk at once


def read(shard: str, handle, image_field, key_field, max_bytes) -> Iterator[Member | Failure]:
    try:
        # pre_buffer=False: newer pyarrow would otherwise read a row group's column chunks whole, ahead.
        parquet = pq.ParquetFile(handle, buffer_size=_BUFFER, pre_buffer=False)
    except (OSError, pa.ArrowException) as error:
        message = f"{shard}: damaged: not a readable Parquet file ({one_line(error)}); no row read"
        yield Failure(shard, "read", "damaged_shard", message)
        return
    schema = parquet.schema_arrow
    image, path, problem = _image_column(schema, image_field)
    key = key_field if key_field in schema.names else None
    columns = [c for c in (path, key) if c is not None]
    uris = Uris(shard, track=key is not None)
    first, damage, lost = 0, [], 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        index = first
        try:
            if columns:
                batches = parquet.iter_batches(_ROWS, row_groups=[group], columns=columns)
            else:  # no column to read: the row count says how many rows there are
                batches = [pa.record_batch({"row": pa.nulls(rows)})]
            for batch in batches:
                images = _image_values(batch.column(image)) if image else None
                lengths = pc.binary_length(images) if image else None
                keys = batch.column(key) if key else None
                for i in range(batch.num_rows):
                    name = keys[i].as_py() if key else None
                    uri = uris(str(index)) if name is None else uris(key_value(name))
                    if images is None:
                        yield Failure(uri, "read", "no_image", f"{uri}: {problem}")
                    elif not images[i].is_valid:
                        yield Failure(uri, "read", "no_image", f"{uri}: the image cell is null")
                    elif lengths[i].as_py() > max_bytes:
                        yield too_large(uri, "the image cell", lengths[i].as_py(), max_bytes)
                    else:
                        yield Member(uri, images[i].as_py())
                    index += 1
        except (OSError, pa.ArrowException) as error:
            damage.append(f"row group {group}, rows {index}-{first + rows - 1}: {one_line(error)}")
            lost += first + rows - index
        first += rows
    if damage:  # one row for the shard, after every row group that could be read
        message = f"{shard}: damaged: {'; '.join(damage)}; those {lost} row(s) not read, {first - lost} read"
        yield Failure(shard, "read", "damaged_shard", message)


def _image_column(schema: pa.Schema, image_field: str | None) -> tuple[str | None, str | None, str]:
    """The image column's name and the path to read from it, or None, None and why not."""
    names = (image_field,) if image_field else IMAGE_FIELDS
    name = next((n for n in names if n in schema.names), None)
    if name is None:
        return None, None, f"no column {either(names)} (columns: {', '.join(schema.names)})"
    kind = schema.field(name).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return name, name, ""
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        child = kind.field("bytes").type
        if pa.types.is_binary(child) or pa.types.is_large_binary(child):
            return name, f"{name}.bytes", ""  # only the bytes, not the struct's other fields (path)
    return None, None, f"column {name!r} is {kind}, not binary or a struct with a binary 'bytes' field"


def _image_values(column: pa.Array) -> pa.Array:
    """Binary values; a struct's 'bytes' field, null where the struct is null."""
    return pc.struct_field(column, "bytes") if pa.types.is_struct(column.type) else column


def field_problem(handle, image_field: str | None, key_field: str | None) -> str | None:
    """What keeps the schema from fitting --image_field/--key_field, or None (every row has the columns)."""
    try:
        schema = pq.ParquetFile(handle).schema_arrow
    except (OSError, pa.ArrowException):
        return None  # damaged: the job's rows say so, shard by shard
    columns = ", ".join(schema.names)
    for flag, field in (("--image_field", image_field), ("--key_field", key_field)):
        if field is not None and field not in schema.names:
            return f"no column {field!r} for {flag} (columns: {columns})"
    if image_field is None and not any(n in schema.names for n in IMAGE_FIELDS):
        return (
            f"none of the columns {either(IMAGE_FIELDS)} that hold the image by default; "
            f"name it with --image_field (columns: {columns})"
        )
    name, _, problem = _image_column(schema, image_field)
    return None if name is not None else problem


def looks_like(head: bytes) -> bool:
    """Whether a file starts with Parquet's magic bytes."""
    return head.startswith(b"PAR1")
