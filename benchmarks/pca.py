"""Fitting the index's PCA: faiss' PCAMatrix against the numpy fit of pipeline.tools.index, same rows.

    python -m benchmarks.pca                # writes benchmarks/results/pca.{json,txt}

Rows are the synthetic fc7-like vectors of benchmarks.index_recall, L2-normalised as
pipeline.tools.index normalises them before fitting; both fits reduce 4096-d to --dim. numpy's
fit (`pipeline.tools.index.fit_pca`: covariance in chunks + `eigh`, or the SVD with fewer rows
than dimensions) runs on each of --numpy_rows; faiss' `PCAMatrix.train` on --faiss_rows
only, since it is the slow one. Each fit runs once (they take seconds to minutes; noise
is small against that, and a second faiss fit would double the command's time).
"""

from __future__ import annotations

import argparse
import sys
import time

import faiss

from benchmarks import results, tables
from benchmarks.index_recall import SyntheticFc7
from pipeline.tools.index import fit_pca, normalize


def rows(count: int):
    return normalize(SyntheticFc7(count, seed=1).all())


def time_faiss(sample, dim: int) -> float:
    pca = faiss.PCAMatrix(sample.shape[1], dim)
    start = time.perf_counter()
    pca.train(sample)
    return time.perf_counter() - start


def time_numpy(sample, dim: int) -> tuple[float, float]:
    """(seconds, fraction of the variance kept)."""
    start = time.perf_counter()
    _, _, kept = fit_pca(sample, dim)
    return time.perf_counter() - start, kept


def table(result: dict, markdown: bool = False) -> str:
    head = ("fit", "rows", "seconds", "variance kept")
    body = [
        (
            f["library"],
            f"{f['rows']:,}",
            f"{f['seconds']:.1f}",
            f"{f['variance_kept']:.3f}" if f["variance_kept"] else "",
        )
        for f in result["fits"]
    ]
    intro = (
        f"PCA of synthetic fc7-like vectors, 4096-d to {result['dim']}-d; faiss {result['faiss']}, "
        f"{result['threads']} threads; numpy {result['machine']['numpy']}"
    )
    lines = [intro, "", tables.table(head, body, markdown=markdown)]
    return "\n".join([results.machine_line(result["machine"]), *([""] if markdown else []), *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pca", description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--faiss_rows", type=int, default=20_000)
    parser.add_argument("--numpy_rows", default="20000,50000", help="comma-separated row counts")
    parser.add_argument("--results", default=results.RESULTS, help="where pca.json and pca.txt go")
    args = parser.parse_args(argv)
    numpy_rows = [int(n) for n in args.numpy_rows.split(",")]
    fits = []
    for count in numpy_rows:
        seconds, kept = time_numpy(rows(count), args.dim)
        fits.append({"library": "numpy (pipeline.tools.index.fit_pca)", "rows": count, "seconds": seconds,
                     "variance_kept": kept})  # fmt: skip
    fits.append({"library": "faiss PCAMatrix.train", "rows": args.faiss_rows,
                 "seconds": time_faiss(rows(args.faiss_rows), args.dim), "variance_kept": None})  # fmt: skip
    result = {
        **results.stamp("pca", "benchmarks.pca", argv),
        "dim": args.dim,
        "faiss": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "fits": fits,
    }
    text = table(result)
    print(text)
    paths = results.write(result, text, args.results, "pca")
    print("wrote " + ", ".join(results.relative(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
