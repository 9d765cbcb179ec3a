"""Recall@10 of the approximate index against exact search, with build time and memory.

    python -m benchmarks.index_recall                 # 200,000 fc7-like vectors, PCA to 256, IVF-SQ8
    python -m benchmarks.index_recall --n 100000 --dim 0 --index_key IVF1024,SQ8   # no PCA

The vectors are synthetic but shaped like VGG16 fc7: 4096-d, non-negative and sparse
(ReLU of a projection), clustered (2,000 "classes" around which images scatter) and of
low intrinsic dimension (a 256-d latent space whose variances fall off as 1/i). Queries
are 1,000 more vectors from the same distribution, not in the index. The index is built
by pipeline.index.build_index exactly as `python -m pipeline.index` builds it, streaming
the vectors in chunks (regenerated for each pass) as it would stream Parquet.

Recall@10 is |approximate top 10 ∩ exact top 10| / 10, averaged over the queries. "Exact"
is brute-force cosine in the index's own space (after PCA when --dim is set), so the figure
measures what the approximate index loses; the loss PCA itself causes against exact
4096-d cosine is printed separately.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time

import faiss
import numpy as np

from pipeline.index import BATCH_ROWS, Embeddings, build_index, normalize
from pipeline.search import EmbeddingIndex


class SyntheticFc7:
    """`count` fc7-like vectors in chunks; the same seed always gives the same vectors."""

    def __init__(
        self,
        count: int,
        *,
        dim: int = 4096,
        seed: int = 0,
        latent: int = 256,
        clusters: int = 2000,
        chunk: int = BATCH_ROWS,
    ):
        self.count, self.dim, self.seed, self.chunk = count, dim, seed, chunk
        model = np.random.default_rng(1234)  # the "network": fixed whatever the seed
        self._scales = (np.arange(1, latent + 1) ** -0.5).astype(np.float32) * 4
        self._weights = model.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)
        self._centres = model.standard_normal((clusters, latent), dtype=np.float32) * self._scales

    def batches(self):
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.count, self.chunk):
            n = min(self.chunk, self.count - start)
            latent = self._centres[rng.integers(0, len(self._centres), n)]
            latent += rng.standard_normal(latent.shape, dtype=np.float32) * self._scales * 0.6
            vectors = np.maximum(latent @ self._weights - 0.4, 0)  # ReLU; about 30% non-zero
            ids = [f"synthetic-{self.seed}-{start + i}" for i in range(n)]
            yield Embeddings(ids, ids, vectors)

    def all(self) -> np.ndarray:
        return np.concatenate([batch.vectors for batch in self.batches()])


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / k (rows are the ids of each query's top k)."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / k for f, e in zip(found, exact)]))


def exact_search(source, queries: np.ndarray, k: int, transform=None) -> np.ndarray:
    """Brute-force cosine top-k ids of each query over the streamed source (one chunk in memory)."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    start = 0
    for batch in source.batches():
        vectors = normalize(batch.vectors)
        if transform is not None:
            vectors = transform(vectors)
        scores = queries @ vectors.T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        heap.add_result(np.take_along_axis(scores, top, 1), top + start)
        start += len(vectors)
    heap.finalize()
    return heap.I


def chain(index: faiss.Index):
    """The index's own transforms (PCA, normalisation) as a numpy function, or None."""
    if not isinstance(index, faiss.IndexPreTransform):
        return None
    steps = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]

    def apply(x: np.ndarray) -> np.ndarray:
        for step in steps:
            x = step.apply(x)
        return x

    return apply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="vectors indexed")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256, help="PCA dimension; 0 keeps all 4096")
    parser.add_argument("--index_key", default=None, help="faiss index_factory string (default: ours)")
    parser.add_argument("--search_params", default=None)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; synthetic fc7-like vectors")
    source = SyntheticFc7(args.n, seed=1)
    with tempfile.TemporaryDirectory() as out:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        info = build_index(
            source,
            out,
            provenance={"weights_untrained": "n/a: synthetic vectors"},
            dim=args.dim or None,
            index_key=args.index_key,
            search_params=args.search_params,
        )
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        index = EmbeddingIndex(out)
        print(
            f"built {info['kind']} {info['index_key']} ({info['search_params'] or 'no search params'}; "
            f"tuning {info['tuning']}) on "
            f"{info['count']} x {info['input_dim']}-d, PCA {info['pca']}\n"
            f"build {info['build_seconds']} s; index file {info['index_bytes'] / 2**20:.1f} MiB "
            f"({info['index_bytes'] / info['count']:.0f} B/vector; raw fc7 is {4 * info['input_dim']} B); "
            f"peak RSS {rss_peak / 2**10:.0f} MiB (before build {rss_before / 2**10:.0f} MiB)"
        )
        queries = normalize(SyntheticFc7(args.queries, seed=2).all())
        start = time.perf_counter()
        _, found = index.index.search(queries, args.k)
        per_query = (time.perf_counter() - start) / len(queries) * 1e3
        start = time.perf_counter()
        for query in queries[:20]:
            index.index.search(query[None], args.k)
        single = (time.perf_counter() - start) / 20 * 1e3
        transform = chain(index.index)
        start = time.perf_counter()
        exact = exact_search(source, transform(queries) if transform else queries, args.k, transform)
        exact_s = time.perf_counter() - start
        print(
            f"recall@{args.k} vs exact search in the index's space: {recall_at(found, exact):.4f} "
            f"({single:.2f} ms for one query alone, {per_query:.3f} ms/query in a batch of {len(queries)}; "
            f"brute force took {exact_s:.1f} s)"
        )
        if transform is not None:
            full = exact_search(source, queries, args.k)
            print(
                f"recall@{args.k} vs exact 4096-d cosine: approximate {recall_at(found, full):.4f}, "
                f"exact after PCA {recall_at(exact, full):.4f} (what PCA alone costs)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
