"""Recall@10 of the approximate index against exact search, with build time and memory.

    python -m benchmarks.index_recall                 # 200,000 fc7-like vectors, PCA to 256, IVF-SQ8
    python -m benchmarks.index_recall --n 100000 --dim 0 --index_key IVF1024,SQ8   # no PCA

The vectors are synthetic but shaped like VGG16 fc7: 4096-d, non-negative and sparse
(ReLU of a projection), clustered (2,000 "classes" around which images scatter) and of
low intrinsic dimension (a 256-d latent space whose variances fall off as 1/i). Queries
are 1,000 more vectors from the same distribution, not in the index. The index is built
by pipeline.tools.index.build_index exactly as `python -m pipeline.index` builds it, streaming
the vectors in chunks (regenerated for each pass) as it would stream Parquet.

Recall@10 is |approximate top 10 ∩ exact top 10| / 10, averaged over the queries. "Exact"
is brute-force cosine in the index's own space (after PCA when --dim is set), so the figure
measures what the approximate index loses; the loss PCA itself causes against exact
4096-d cosine is printed separately.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time

import faiss
import numpy as np

from benchmarks import results, tables
from pipeline.tools.index import BATCH_ROWS, Embeddings, build_index, normalize
from pipeline.tools.search import EmbeddingIndex


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


def measure(n: int, queries: int, dim: int, index_key: str | None, search_params: str | None, k: int,
            full_exact: bool = True) -> dict:  # fmt: skip
    """One index built and queried: its build figures, query times and recall@k."""
    source = SyntheticFc7(n, seed=1)
    with tempfile.TemporaryDirectory() as out:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        info = build_index(
            source,
            out,
            provenance={"weights_untrained": "n/a: synthetic vectors"},
            dim=dim or None,
            index_key=index_key,
            search_params=search_params,
        )
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        index = EmbeddingIndex(out)
        vectors = normalize(SyntheticFc7(queries, seed=2).all())
        start = time.perf_counter()
        _, found = index.index.search(vectors, k)
        per_query = (time.perf_counter() - start) / len(vectors) * 1e3
        start = time.perf_counter()
        for query in vectors[:20]:
            index.index.search(query[None], k)
        single = (time.perf_counter() - start) / 20 * 1e3
        transform = chain(index.index)
        start = time.perf_counter()
        exact = exact_search(source, transform(vectors) if transform else vectors, k, transform)
        result = {
            "n": n,
            "queries": queries,
            "k": k,
            "faiss": faiss.__version__,
            "threads": faiss.omp_get_max_threads(),
            "build": {key: info[key] for key in ("kind", "index_key", "search_params", "tuning", "count",
                                                 "input_dim", "pca", "build_seconds", "index_bytes")},
            "peak_rss_mib": rss_peak / 2**10,  # ru_maxrss is KiB on Linux
            "rss_before_build_mib": rss_before / 2**10,
            "ms_per_query_batch": per_query,
            "ms_single_query": single,
            "exact_s": time.perf_counter() - start,
            "recall": recall_at(found, exact),
            "recall_vs_full": None,
            "recall_pca_alone": None,
        }  # fmt: skip
        if transform is not None and full_exact:
            full = exact_search(source, vectors, k)
            result["recall_vs_full"], result["recall_pca_alone"] = (
                recall_at(found, full),
                recall_at(exact, full),
            )
    return result


def lines(r: dict) -> str:
    """One run as the command prints it."""
    b = r["build"]
    text = (
        f"faiss {r['faiss']}, {r['threads']} threads; {r['n']} synthetic fc7-like vectors\n"
        f"built {b['kind']} {b['index_key']} ({b['search_params'] or 'no search params'}; "
        f"tuning {b['tuning']}) on {b['count']} x {b['input_dim']}-d, PCA {b['pca']}\n"
        f"build {b['build_seconds']} s; index file {b['index_bytes'] / 2**20:.1f} MiB "
        f"({b['index_bytes'] / b['count']:.0f} B/vector; raw fc7 is {4 * b['input_dim']} B); "
        f"peak RSS {r['peak_rss_mib']:.0f} MiB (before build {r['rss_before_build_mib']:.0f} MiB)\n"
        f"recall@{r['k']} vs exact search in the index's space: {r['recall']:.4f} "
        f"({r['ms_single_query']:.2f} ms for one query alone, {r['ms_per_query_batch']:.3f} ms/query in a "
        f"batch of {r['queries']}; brute force took {r['exact_s']:.1f} s)"
    )
    if r["recall_vs_full"] is not None:
        text += (
            f"\nrecall@{r['k']} vs exact 4096-d cosine: approximate {r['recall_vs_full']:.4f}, "
            f"exact after PCA {r['recall_pca_alone']:.4f} (what PCA alone costs)"
        )
    return text


# The runs the docs quote: our default on 200,000 vectors, the exact index at its 100,000
# threshold, and the index types compared on 100,000 (their exact-4096-d pass is skipped).
SUITE = {
    "default, 200,000": ["--n", "200000"],
    "exact at the threshold": ["--n", "100000", "--dim", "0"],
    "IVF1024,SQ8": ["--n", "100000", "--index_key", "IVF1024,SQ8", "--search_params", "nprobe=32"],
    "IVF1024,PQ64": ["--n", "100000", "--index_key", "IVF1024,PQ64", "--search_params", "nprobe=32"],
    "IVF1024,PQ64x4fs,Refine(SQ8)": [
        "--n",
        "100000",
        "--index_key",
        "IVF1024,PQ64x4fs,Refine(SQ8)",
        "--search_params",
        "nprobe=32,k_factor_rf=8",
    ],  # fmt: skip
    "HNSW32,SQ8": ["--n", "100000", "--index_key", "HNSW32,SQ8", "--search_params", "efSearch=64"],
}
COMPARED = ("IVF1024,SQ8", "IVF1024,PQ64", "IVF1024,PQ64x4fs,Refine(SQ8)", "HNSW32,SQ8")


def run_suite(suite: dict[str, list[str]], scale: float) -> dict:
    """Each run in its own process (so that each peak RSS is its own), in order."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, suite_flags in suite.items():
            flags = list(suite_flags)
            flags[flags.index("--n") + 1] = str(int(int(flags[flags.index("--n") + 1]) * scale))
            if name in COMPARED:
                flags.append("--skip_full_exact")
            if scale != 1:
                flags += ["--queries", str(max(int(1000 * scale), 10))]
            path = os.path.join(tmp, "run.json")
            subprocess.run([sys.executable, "-m", "benchmarks.index_recall", *flags, "--json", path],
                           check=True, cwd=results.REPO, stdout=subprocess.DEVNULL)  # fmt: skip
            with open(path) as handle:
                command = "python -m benchmarks.index_recall " + " ".join(map(results.quote, flags))
                runs[name] = {"command": command, **json.load(handle)}
    return runs


def table(result: dict, markdown: bool = False) -> str:
    """The suite's table: one row per run."""
    head = ("run", "index", "search params", f"recall@{10}", "vs 4096-d", "B/vector", "build s",
            "peak RSS GiB", "ms/query (1,000)", "ms one query")  # fmt: skip
    rows = []
    for name, r in result["runs"].items():
        b = r["build"]
        rows.append((name, b["index_key"], b["search_params"] or "", f"{r['recall']:.4f}",
                     f"{r['recall_vs_full']:.4f}" if r["recall_vs_full"] is not None else "",
                     f"{b['index_bytes'] / b['count']:.0f}", f"{b['build_seconds']:.0f}",
                     f"{r['peak_rss_mib'] / 1024:.2f}", f"{r['ms_per_query_batch']:.2f}",
                     f"{r['ms_single_query']:.1f}"))  # fmt: skip
    queries = " or ".join(sorted({f"{r['queries']:,}" for r in result["runs"].values()}))
    intro = (
        "synthetic fc7-like vectors (4096-d); recall@10 against exact search in the index's space, "
        f"'vs 4096-d' against exact 4096-d cosine; {queries} held-out queries"
    )
    body = [intro, "", tables.table(head, rows, markdown=markdown, align="lll" + "r" * 7)]
    return "\n".join([results.machine_line(result["machine"]), *([""] if markdown else []), *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="vectors indexed")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256, help="PCA dimension; 0 keeps all 4096")
    parser.add_argument("--index_key", default=None, help="faiss index_factory string (default: ours)")
    parser.add_argument("--search_params", default=None)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--skip_full_exact", action="store_true", help="no recall against exact 4096-d")
    parser.add_argument("--json", default=None, help="also write this run's figures to this file")
    parser.add_argument(
        "--suite", action="store_true", help="the docs' runs, each in its own process; writes index_recall.*"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="with --suite: scale every --n (a check)")
    parser.add_argument("--results", default=results.RESULTS, help="with --suite: where the results go")
    args = parser.parse_args(argv)
    if args.suite:
        result = {**results.stamp("index_recall", "benchmarks.index_recall", argv),
                  "runs": run_suite(SUITE, args.scale)}  # fmt: skip
        text = table(result)
        print(text)
        paths = results.write(result, text, args.results, "index_recall")
        print("wrote " + ", ".join(results.relative(p) for p in paths))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = measure(args.n, args.queries, args.dim, args.index_key, args.search_params, args.k,
                     full_exact=not args.skip_full_exact)  # fmt: skip
    print(lines(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
