"""Builds a nearest-neighbour index of an output's fc7 embeddings; pipeline.search queries it.

    python -m pipeline.index --predictions out/ --out index/ [--dim 256]

Vectors are L2-normalised so that inner product is cosine similarity; with ``--dim`` a PCA
(numpy, fitted on a sample) reduces them and they are normalised again. The index is
faiss (``faiss-cpu``): the reference library for exact and compressed search on CPU,
and what autofaiss and clip-retrieval build, so their users can open our ``knn.index``.
Up to ``EXACT_MAX`` vectors the index is exact (``Flat``); past it, ``IVF{nlist},SQ8``
with nprobe tuned during the build to an estimated recall@10 of ``TARGET_RECALL`` (see
docs/search.md for the measured recall, memory, and why SQ8 rather than PQ).

An index directory holds ``knn.index`` (faiss; PCA and normalisation inside it, so a
query is the L2-normalised fc7), ``ids.parquet`` (row, image_id, uri: faiss id ``row``)
and ``index.json`` (provenance of the embeddings and how the index was built).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import table as delta
from pipeline.contract import (
    EMBEDDING_KEYS,
    METADATA_PREFIX,
    PREDICTIONS,
    UNTRAINED_WARNING,
    decode_provenance,
    disagreements,
    is_untrained,
)
from pipeline.tools.extras import MissingExtra, faiss

log = logging.getLogger("pipeline.tools.index")

INDEX_FILE, IDS_FILE, INFO_FILE = "knn.index", "ids.parquet", "index.json"
EXACT_MAX = 100_000  # exact up to here: 1.6 GB of float32 at 4096-d, a full scan per query
TRAIN_SIZE = 50_000  # sample rows for PCA and IVF training (800 MB at 4096-d)
BATCH_ROWS = 4096  # rows read and added at once (64 MiB of fc7)
TUNE_QUERIES = 256  # sampled rows whose exact neighbours are tracked during the build to tune nprobe
TARGET_RECALL = 0.97  # nprobe is raised until the estimated recall@10 reaches this
IDS_ROW_GROUP = 65_536
# Provenance the index keeps; all inputs must agree on the keys that change the vectors.
PROVENANCE = (*EMBEDDING_KEYS, "weights_name", "weights_untrained", "package_version")
IDS_SCHEMA = pa.schema([("row", pa.int64()), ("image_id", pa.string()), ("uri", pa.string())])


class Embeddings(NamedTuple):
    """One batch: parallel image ids, URIs and (n, dim) float32 vectors."""

    image_ids: pa.Array
    uris: pa.Array
    vectors: np.ndarray


class EmbeddingSource(Protocol):
    """What the builder reads: a known count and dimension, and batches that can be read again."""

    count: int
    dim: int

    def batches(self) -> Iterator[Embeddings]: ...


class ParquetEmbeddings:
    """fc7 of an output's committed predictions (local, gs://, s3://), streamed in batches."""

    def __init__(self, pattern: str, *, batch_rows: int = BATCH_ROWS):
        try:
            self.files = delta.reader_files(pattern, PREDICTIONS)
        except delta.TableError as error:
            raise ValueError(f"--predictions: {error}") from error
        if not self.files:
            raise ValueError(f"--predictions {pattern!r}: the predictions table holds no files.")
        self.batch_rows = batch_rows
        self.count, dims, found = 0, set(), {}
        for path in self.files:
            with FileSystems.open(path, compression_type="uncompressed") as handle:
                parquet = pq.ParquetFile(handle)
                schema, self.count = parquet.schema_arrow, self.count + parquet.metadata.num_rows
            if "fc7" not in schema.names or not pa.types.is_fixed_size_list(schema.field("fc7").type):
                raise ValueError(
                    f"{path} has no fc7 column; re-run pipeline.run with --embeddings. Received columns: "
                    f"{schema.names}"
                )
            dims.add(schema.field("fc7").type.list_size)
            found[path] = decode_provenance(schema.metadata)
        if len(dims) > 1:
            raise ValueError(
                f"the predictions hold fc7 of several sizes {sorted(dims)}; index one run at a time."
            )
        self.dim = dims.pop()
        self.provenance = _agreed_provenance(found) | {"predictions": pattern}

    def batches(self) -> Iterator[Embeddings]:
        for path in self.files:
            with FileSystems.open(path, compression_type="uncompressed") as handle:
                columns = ["image_id", "uri", "fc7"]
                # pre_buffer=False: newer pyarrow would otherwise read a row group's whole columns ahead.
                parquet = pq.ParquetFile(handle, pre_buffer=False)
                for batch in parquet.iter_batches(self.batch_rows, columns=columns):
                    fc7 = batch.column("fc7").flatten().to_numpy(zero_copy_only=False)
                    yield Embeddings(batch.column("image_id"), batch.column("uri"), fc7.reshape(-1, self.dim))


class ArrayEmbeddings:
    """Vectors already in memory as a source (embeddings made elsewhere, tests, benchmarks)."""

    def __init__(
        self, vectors: np.ndarray, image_ids: list[str], uris: list[str], *, batch_rows: int = BATCH_ROWS
    ):
        if not len(vectors) == len(image_ids) == len(uris):
            lengths = f"{len(vectors)}, {len(image_ids)}, {len(uris)}"
            raise ValueError(f"vectors, image_ids and uris must be as long. Received: {lengths}")
        self.vectors, self.image_ids, self.uris = np.asarray(vectors), list(image_ids), list(uris)
        self.count, self.dim, self.batch_rows = len(vectors), self.vectors.shape[1], batch_rows

    def batches(self) -> Iterator[Embeddings]:
        for i in range(0, self.count, self.batch_rows):
            j = i + self.batch_rows
            yield Embeddings(pa.array(self.image_ids[i:j]), pa.array(self.uris[i:j]), self.vectors[i:j])


def _agreed_provenance(found: dict[str, dict[str, str]]) -> dict[str, str]:
    for path, values in found.items():
        missing = [key for key in EMBEDDING_KEYS if key not in values]
        if missing:
            raise ValueError(
                f"{path} has no {METADATA_PREFIX}{missing[0]} metadata, so a query cannot be embedded the "
                "same way; index the predictions that pipeline.run writes."
            )
    (first_path, first), *rest = found.items()
    for path, values in rest:
        differences = disagreements(first, values, EMBEDDING_KEYS)
        if differences:
            raise ValueError(
                f"the predictions disagree on {'; '.join(differences)} ({first_path} -> {path}); their fc7 "
                "are not comparable. Index the output of one run (or runs with the same weights, resize "
                "and precision)."
            )
    return {key: first.get(key, "") for key in PROVENANCE}


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a float32 copy); all-zero rows stay zero and match nothing."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def choose_index(count: int, *, exact_max: int = EXACT_MAX, train_size: int = TRAIN_SIZE) -> str:
    """The faiss index_key for `count` vectors: exact up to exact_max, then IVF with 8-bit codes."""
    if count <= exact_max:
        return "Flat"
    # nlist ~ 4 sqrt(N), as autofaiss does; k-means wants >= 39 training points per list.
    return f"IVF{max(1, min(2 ** int(math.log2(4 * math.sqrt(count))), min(train_size, count) // 39))},SQ8"


def fit_pca(sample: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(components (dim, d), mean (d,), fraction of variance kept) of normalised rows."""
    if not 1 <= dim <= min(sample.shape):
        raise ValueError(
            f"--dim must be between 1 and min(training rows, input dimension) = {min(sample.shape)}. "
            f"Received: dim={dim}"
        )
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    if len(sample) < sample.shape[1]:  # few rows: the SVD of the rows is cheaper than the covariance
        _, singular, vt = np.linalg.svd(sample - mean, full_matrices=False)
        variance, components = singular**2, vt[:dim]
    else:
        cov = np.zeros((sample.shape[1],) * 2, np.float64)
        for start in range(0, len(sample), 8192):  # chunks: never a second full copy of the sample
            chunk = sample[start : start + 8192] - mean
            cov += chunk.T @ chunk
        variance, vectors = np.linalg.eigh(cov)
        variance, components = variance[::-1], vectors[:, ::-1][:, :dim].T
    return components.astype(np.float32), mean, float(variance[:dim].sum() / variance.sum())


def _pca_index(components: np.ndarray, mean: np.ndarray, inner) -> faiss.Index:
    """inner behind PCA then L2 normalisation, all in one faiss index (it saves with it)."""
    pca = faiss.LinearTransform(components.shape[1], components.shape[0], True)
    faiss.copy_array_to_vector(components.ravel(), pca.A)
    faiss.copy_array_to_vector(-(components @ mean), pca.b)
    pca.is_trained = True
    index = faiss.IndexPreTransform(faiss.NormalizationTransform(components.shape[0], 2.0), inner)
    index.prepend_transform(pca)
    return index


def _sample(source: EmbeddingSource, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers, normalised rows) of `size` rows drawn uniformly, in one streaming pass."""
    keep = np.sort(np.random.default_rng(seed).choice(source.count, size, replace=False))
    out, filled, start = np.empty((size, source.dim), np.float32), 0, 0
    for batch in source.batches():
        lo, hi = np.searchsorted(keep, [start, start + len(batch.vectors)])
        out[filled : filled + hi - lo] = normalize(batch.vectors[keep[lo:hi] - start])
        filled, start = filled + hi - lo, start + len(batch.vectors)
        if filled == size:
            break
    return keep, out


def _reducer(components: np.ndarray, mean: np.ndarray):
    def reduce(vectors: np.ndarray) -> np.ndarray:  # in chunks: no full-size 4096-d temporary
        chunks = [vectors[i : i + 8192] for i in range(0, len(vectors), 8192)]
        return np.concatenate([normalize((chunk - mean) @ components.T) for chunk in chunks])

    return reduce


class RecallProbe:
    """Exact top-k of a few indexed rows, kept while the rows are added; then the nprobe to use.

    autofaiss-style tuning: the smallest power-of-two nprobe whose estimated recall@k
    reaches `target`. Each probe row is left out of its own neighbours, so the estimate
    is what a query that is not in the index gets.
    """

    def __init__(self, queries: np.ndarray, rows: np.ndarray, *, k: int = 10, target: float = TARGET_RECALL):
        self.queries, self.rows, self.k, self.target = queries, rows, k, target
        self._heap = faiss.ResultHeap(len(queries), k + 1, keep_max=True)

    def add(self, vectors: np.ndarray, first_row: int) -> None:
        scores = self.queries @ vectors.T
        ids = np.broadcast_to(np.arange(first_row, first_row + len(vectors), dtype=np.int64), scores.shape)
        self._heap.add_result(np.ascontiguousarray(scores), np.ascontiguousarray(ids))

    def recall(self, found: np.ndarray, truth: np.ndarray) -> float:
        pairs = zip(found, truth, self.rows)
        return float(
            np.mean([len(set(f[f != r][: self.k]) & set(t[t != r][: self.k])) / self.k for f, t, r in pairs])
        )

    def tune(self, index: faiss.IndexIVF) -> tuple[str, float]:
        self._heap.finalize()
        nprobe = 1
        while True:
            index.nprobe = nprobe
            estimate = self.recall(index.search(self.queries, self.k + 1)[1], self._heap.I)
            if estimate >= self.target or nprobe >= index.nlist:
                return f"nprobe={nprobe}", round(estimate, 4)
            nprobe *= 2


def _add_all(source: EmbeddingSource, index: faiss.Index, out: str, reduce=None, probe=None) -> int:
    """Adds every batch (normalised, reduced) and writes ids.parquet; returns the all-zero count."""
    buffered, zero = [], 0
    with pq.ParquetWriter(os.path.join(out, IDS_FILE), IDS_SCHEMA, compression="zstd") as writer:
        for batch in source.batches():
            vectors = normalize(batch.vectors)
            zero += int((~vectors.any(axis=1)).sum())
            vectors = reduce(vectors) if reduce else vectors
            if probe:
                probe.add(vectors, index.ntotal)
            rows = pa.array(np.arange(index.ntotal, index.ntotal + len(vectors)), pa.int64())
            index.add(vectors)
            buffered.append(pa.table([rows, batch.image_ids, batch.uris], schema=IDS_SCHEMA))
            pending = sum(len(t) for t in buffered)
            if pending >= IDS_ROW_GROUP:  # whole row groups only: a row's group is row // IDS_ROW_GROUP
                table, full = pa.concat_tables(buffered), pending - pending % IDS_ROW_GROUP
                writer.write_table(table.slice(0, full), row_group_size=IDS_ROW_GROUP)
                buffered = [table.slice(full)]
        if buffered:
            writer.write_table(pa.concat_tables(buffered), row_group_size=IDS_ROW_GROUP)
    if zero:
        log.warning("%d all-zero fc7 vectors: they have no direction and score 0 against everything", zero)
    return zero


def build_index(
    source: EmbeddingSource,
    out: str,
    *,
    provenance: dict[str, str],
    dim: int | None = None,
    exact_max: int = EXACT_MAX,
    index_key: str | None = None,
    search_params: str | None = None,
    train_size: int = TRAIN_SIZE,
    seed: int = 0,
) -> dict:
    """Builds an index directory from `source`; returns what index.json says.

    Passes over the source: one to sample training rows when PCA or IVF needs training,
    one to add everything. IVF's nprobe is tuned unless `search_params` is given.
    """
    if "://" in out:
        raise ValueError(f"--out must be a local directory (copy it afterwards). Received: out={out!r}")
    if source.count == 0:
        raise ValueError("no embeddings to index: the predictions hold 0 rows.")
    start = time.monotonic()
    key = index_key or choose_index(source.count, exact_max=exact_max, train_size=train_size)
    params = search_params or ""
    inner = faiss.index_factory(dim or source.dim, key, faiss.METRIC_INNER_PRODUCT)
    reduce = pca = probe = tuned = None
    if dim or not inner.is_trained:
        keep, sample = _sample(source, min(source.count, train_size), seed)
        log.info("sampled %d training rows (%.1f s into the build)", len(sample), time.monotonic() - start)
        if dim:
            components, mean, kept = fit_pca(sample, dim)
            pca = {"dim": dim, "train_rows": len(sample), "variance_kept": round(kept, 4)}
            reduce = _reducer(components, mean)
            sample = reduce(sample)
            log.info(
                "PCA to %d-d keeps %.1f%% of the variance (%.1f s)", dim, 100 * kept, time.monotonic() - start
            )
        if not inner.is_trained:
            inner.train(sample)
            log.info("trained %s (%.1f s into the build)", key, time.monotonic() - start)
        if isinstance(inner, faiss.IndexIVF) and search_params is None:
            pick = np.random.default_rng(seed).choice(
                len(sample), min(TUNE_QUERIES, len(sample)), replace=False
            )
            probe = RecallProbe(sample[pick], keep[pick])
        del sample
    os.makedirs(out, exist_ok=True)
    zero = _add_all(source, inner, out, reduce, probe)
    log.info("added %d vectors (%.1f s into the build)", inner.ntotal, time.monotonic() - start)
    if probe:
        params, estimate = probe.tune(inner)
        tuned = {
            "target_recall@10": probe.target,
            "estimated_recall@10": estimate,
            "probe_rows": len(probe.rows),
        }
    # PCA and normalisation go inside the saved index, so a query is just the normalised fc7.
    index = _pca_index(components, mean, inner) if dim else inner
    faiss.write_index(index, os.path.join(out, INDEX_FILE))
    info = {
        "count": int(index.ntotal),
        "input_dim": source.dim,
        "dim": dim or source.dim,
        "metric": "cosine (inner product of L2-normalised vectors)",
        "kind": "exact" if key == "Flat" else "approximate",
        "index_key": key,
        "search_params": params,
        "tuning": tuned,
        "pca": pca,
        "zero_vectors": zero,
        "provenance": provenance,
        "build_seconds": round(time.monotonic() - start, 2),
        "index_bytes": os.path.getsize(os.path.join(out, INDEX_FILE)),
        "faiss_version": faiss.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(os.path.join(out, INFO_FILE), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.index", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--predictions", required=True, help="the job's --output folder (made with --embeddings)"
    )
    parser.add_argument("--out", required=True, help="index directory to write (local)")
    parser.add_argument("--dim", type=int, default=None, help="reduce to this many dimensions with PCA")
    parser.add_argument("--exact_max", type=int, default=EXACT_MAX, help="largest count kept exact")
    parser.add_argument("--index_key", default=None, help="faiss index_factory string, overriding the choice")
    parser.add_argument("--search_params", default=None, help="faiss ParameterSpace string, e.g. nprobe=64")
    parser.add_argument("--train_size", type=int, default=TRAIN_SIZE, help="rows sampled to train PCA/IVF")
    parser.add_argument("--batch_rows", type=int, default=BATCH_ROWS, help="rows read at once")
    args = parser.parse_args(argv)
    from pipeline import logs

    logs.configure(logging.INFO)  # the build's progress; faiss' loader notices stay off
    try:
        faiss.require()
        source = ParquetEmbeddings(args.predictions, batch_rows=args.batch_rows)
        info = build_index(
            source,
            args.out,
            provenance=source.provenance,
            dim=args.dim,
            exact_max=args.exact_max,
            index_key=args.index_key,
            search_params=args.search_params,
            train_size=args.train_size,
        )
    except (ValueError, RuntimeError, MissingExtra) as error:  # faiss: bad index keys are RuntimeErrors
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"indexed {info['count']} images into {args.out}: {info['kind']} {info['index_key']} "
        f"({info['dim']}-d), {info['index_bytes'] / 2**20:.1f} MiB, {info['build_seconds']} s"
    )
    if is_untrained(info["provenance"]):
        print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
