"""The host path's measured process: pipeline.run with a stand-in forward pass, and its parts per image.

    python -m benchmarks.host_path_job JOB_ARGS...                  # pipeline.run's command line
    python -m benchmarks.host_path_job --breakdown 'DIR/*.jpg' N    # one JSON line: µs per image per part

`benchmarks.host_path` starts it in a child process pinned to the cores it measures, in
the source tree it measures: this repository, or a `--baseline` revision's worktree that
gets a copy of this file. So it uses only what both have: `pipeline.run.main(argv,
handler=...)`, the handler, `vgg.inference.Predictor`, the decoder, the sandbox, the
formatting step and the Parquet schemas.

Everything of the job runs as it does for a user except the model's forward pass: a
Predictor whose traced graph is replaced by a stand-in of negligible cost that returns
correctly shaped float32 outputs (probs rows summing to 1, fc7), so what is measured is
what the job costs per image outside the model.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.host_path import STAND_IN
from pipeline.job.model_handler import ModelConfig, VGG16ModelHandler
from vgg.inference import Predictor

log = logging.getLogger("benchmarks.host_path")
_NUM_CLASSES, _FC7_DIM = 1000, 4096


class _Output:
    """What the traced graph's outputs offer Predictor: `.numpy()`, a fresh array as TensorFlow gives."""

    def __init__(self, array: np.ndarray):
        self._array = array

    def numpy(self) -> np.ndarray:
        return self._array.copy()


class StandInForward:
    """The traced graph's stand-in: {"probs": (N, 1000), "fc7": (N, 4096)} float32, made once, sliced."""

    def __init__(self, rows: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        logits = rng.normal(0.0, 3.0, (rows, _NUM_CLASSES))
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        self._probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        self._fc7 = np.maximum(rng.normal(0.0, 1.0, (rows, _FC7_DIM)), 0.0).astype(np.float32)

    def __call__(self, images: np.ndarray) -> dict[str, _Output]:
        n = len(images)
        if n > len(self._probs):
            raise ValueError(f"the stand-in holds {len(self._probs)} rows. Received: a batch of {n}")
        return {"probs": _Output(self._probs[:n]), "fc7": _Output(self._fc7[:n])}


class StandInPredictor(Predictor):
    """vgg.inference.Predictor with the stand-in for its traced forward pass; its __call__ is the real one.

    Predictor.__init__ would load weights and trace the graph: neither is needed here.
    """

    def __init__(self, max_batch_size: int):
        self.device = STAND_IN
        self.precision = "float32"
        self.conv_batch = None  # no convolutions to slice
        self.max_batch_size = max_batch_size
        self._forward = StandInForward(max_batch_size)


class HostPathHandler(VGG16ModelHandler):
    """The job's model handler (its run_inference, batching and sharing) with the stand-in model."""

    def load_model(self):
        log.warning(STAND_IN)
        return StandInPredictor(self.config.max_batch_size)


def handler_for(argv: list[str]) -> HostPathHandler:
    """The handler with the batching the command line asks for, as the job would build it."""
    from pipeline.job import options

    args, _ = options.parse_args(argv)
    return HostPathHandler(ModelConfig.from_args(args))


# ------------------------------------------------------------------- the parts, per image


def _best_us(work, items: list, passes: int) -> float:
    """Microseconds per item of work(item), the fastest of `passes` passes (noise only adds time)."""
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for item in items:
            work(item)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e6


def write_rows(rows: list[dict], schema, path: str) -> None:
    """The rows to one Parquet file as the job's predictions writer does (pipeline.job.write)."""
    from pipeline.job import write

    if hasattr(write, "_ParquetSink"):  # the job's own conversion and sink, outside Beam
        convert = write._RowsToTables(schema, write.PARQUET["record_batch_size"][write.PREDICTIONS], 1 << 62)
        convert.start_bundle()
        for row in rows:
            list(convert.process(row))
        (table,) = [value.value for value in convert.finish_bundle()]
        sink = write._ParquetSink(path, schema)
        handle = sink.open(path)
        sink.write_record(handle, table)
        sink.close(handle)
        return
    # A revision before it (74bd981): Beam's WriteToParquet with record batches of 256 rows, zstd.
    import pyarrow as pa
    import pyarrow.parquet as pq

    batches = []
    for start in range(0, len(rows), 256):
        chunk = rows[start : start + 256]
        arrays = [
            pa.array([row[name] for row in chunk], type=schema.field(name).type) for name in schema.names
        ]
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        writer.write_table(pa.Table.from_batches(batches, schema=schema))


def breakdown(pattern: str, count: int, passes: int = 3) -> dict:
    """Microseconds per image of each part of the host path, on this process's cores, the same photos.

    read: the bytes as the job's reader gets them (pipeline.storage.read_bytes); decode: the
    decoder in this process; pipe transfer: the sandboxed decoder's round trip minus that;
    postprocess: the job's FormatPredictions on the stand-in's outputs; write: those rows to
    Parquet with the job's schema and writer settings. Also d: bench.bench_decode's rate over
    every photo the pattern matches (the small run's photos, each of which the job decodes).
    """
    from apache_beam.ml.inference.base import PredictionResult

    from benchmarks.bench import bench_decode
    from pipeline.contract import image_id
    from pipeline.job import options, write
    from pipeline.job.label import FormatPredictions
    from pipeline.storage import read_bytes
    from vgg.preprocess import decode_image
    from vgg.sandbox import IsolatedDecoder

    photos = sorted(glob.glob(pattern))
    paths = photos[:count]
    args, _ = options.parse_args(["--input", pattern, "--output", "unused", "--weights", "unused"])
    figures = {"images": len(paths)}
    figures["read"] = _best_us(read_bytes, paths, passes)
    blobs = [read_bytes(path) for path in paths]
    decode = lambda data: decode_image(data, resize=args.resize)  # noqa: E731
    decode(blobs[0])
    figures["decode"] = _best_us(decode, blobs, passes)
    sandbox = IsolatedDecoder(decode_image)
    try:
        sandbox(blobs[0], resize=args.resize)  # the child's start-up, as a worker's first image pays it
        sandboxed = _best_us(lambda data: sandbox(data, resize=args.resize), blobs, passes)
    finally:
        sandbox.close()
    figures["pipe transfer"] = sandboxed - figures["decode"]
    decoded = [decode(data) for data in blobs]
    probs, fc7 = StandInPredictor(len(paths))(np.stack([image.pixels for image in decoded]))
    elements = [
        ((image_id(path), path, image.width, image.height), PredictionResult(None, (p, f)))
        for path, image, p, f in zip(paths, decoded, probs, fc7)
    ]
    formatter = FormatPredictions(args.top_k, True)
    rows = [row for element in elements for row in formatter.process(element)]
    figures["postprocess"] = _best_us(lambda element: list(formatter.process(element)), elements, passes)
    schema = write.schemas({"benchmark": "host_path"}, embeddings=True)[write.PREDICTIONS]
    with tempfile.TemporaryDirectory() as folder:
        target = os.path.join(folder, "predictions.parquet")
        best = float("inf")
        for _ in range(passes):
            start = time.perf_counter()
            write_rows(rows, schema, target)
            best = min(best, time.perf_counter() - start)
    figures["write"] = best / len(rows) * 1e6
    figures["d_per_core"] = bench_decode(photos, passes)
    return figures


def main(argv: list[str]) -> int:
    if argv[:1] == ["--breakdown"]:
        print(json.dumps(breakdown(argv[1], int(argv[2]))), flush=True)
        return 0
    from pipeline import run

    print(STAND_IN, file=sys.stderr, flush=True)
    return run.main(argv, handler=handler_for(argv))


if __name__ == "__main__":
    code = main(sys.argv[1:])
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as pipeline.run: skip the interpreter's teardown once everything is written
