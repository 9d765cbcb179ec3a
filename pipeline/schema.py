"""The output tables: explicit pyarrow schemas, provenance metadata and row builders."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.io import READ_ERROR_TYPES
from vgg.classes import class_names, top_k
from vgg.preprocess import ERROR_TYPES as IMAGE_ERROR_TYPES

LABEL = pa.struct(
    [
        ("class_index", pa.int32()),
        ("wnid", pa.string()),
        ("label", pa.string()),
        ("score", pa.float32()),
    ]
)
FC7_DIM = 4096
# Stages an errors row can name, in pipeline order.
STAGES = ("read", "decode", "inference")
# The whole vocabulary of an errors row: stage -> error_type -> meaning. Stable: users
# filter on these strings, so a new kind of failure gets a new name, never a reused one.
ERROR_TYPES: dict[str, dict[str, str]] = {
    "read": dict(READ_ERROR_TYPES),
    "decode": {
        **IMAGE_ERROR_TYPES,
        "crashed": "the decoder process died on this input (e.g. a segfault in a native library)",
        "timeout": "decoding ran past --decode_timeout_s; the decoder process was killed",
        "decode_error": "the decoder raised an unexpected exception (a bug, not a known bad input)",
    },
    "inference": {"inference_error": "the model failed on the batch holding this image"},
}


def predictions_schema(*, embeddings: bool, metadata: dict[str, str]) -> pa.Schema:
    """image_id, uri, width, height, labels (top_k structs, best first), and fc7 if asked."""
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("labels", pa.list_(LABEL), nullable=False),
    ]
    if embeddings:
        fields.append(pa.field("fc7", pa.list_(pa.float32(), FC7_DIM), nullable=False))
    return pa.schema(fields, metadata=_encode(metadata))


def errors_schema(*, metadata: dict[str, str]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("error_type", pa.string(), nullable=False),
            pa.field("message", pa.string(), nullable=False),
        ],
        metadata=_encode(metadata),
    )


def _encode(metadata: dict[str, str]) -> dict[bytes, bytes]:
    return {f"vgg16.{k}".encode(): str(v).encode() for k, v in metadata.items()}


def prediction_rows(keys, probs: np.ndarray, fc7: np.ndarray | None, k: int) -> list[dict]:
    """Rows for a batch: keys are (image_id, uri, width, height)."""
    names = class_names()
    indices, scores = top_k(probs, k)
    rows = []
    for i, (image_id, uri, width, height) in enumerate(keys):
        row = {
            "image_id": image_id,
            "uri": uri,
            "width": int(width),
            "height": int(height),
            "labels": [
                {
                    "class_index": int(c),
                    "wnid": names[c].wnid,
                    "label": names[c].label,
                    "score": float(s),
                }
                for c, s in zip(indices[i], scores[i])
            ],
        }
        if fc7 is not None:
            row["fc7"] = fc7[i]
        rows.append(row)
    return rows


def error_row(image_id: str, uri: str, stage: str, error_type: str, message: str) -> dict:
    return {
        "image_id": image_id,
        "uri": uri,
        "stage": stage,
        "error_type": error_type,
        "message": message[:2000],
    }
