"""Benchmark: the job end to end against the bare model, the physical limit and two Beam peers, in one run.

    python -m benchmarks.bench                 # writes benchmarks/results/bench.{json,txt} and the plot
    python -m benchmarks.bench --quick --images 24 --rounds 1 --results /tmp/b    # a check, not a figure

Measures, on one machine in one run:
(a) the bare model on preprocessed uint8 batches (batch sizes 1-64, float32 and bfloat16),
    its load time and achieved GFLOP/s, once in every round of every input size, before that
    round's jobs; each size's L comes from the rounds beside its own jobs;
(b) the stock peer and the tuned peer (`benchmarks.peers`): Beam RunInference with its
    TensorFlow handler and keras.applications.VGG16, Keras' load_img + preprocess_input;
(c) `python -m pipeline.run --embeddings` end to end, start-up separated from the steady
    rate by running two input sizes;
(d) decode + preprocess on one pinned core;
all on 640×480 and 12-megapixel JPEGs, and the whole process tree's peak RSS of every job
(`benchmarks.memory`). L = 1/(1/a + 1/(n·d)) is the rate at which n cores could decode and
run the model with nothing wasted. Weights are synthesized (UNTRAINED) unless --weights is
given: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks import images, memory, model, peers, results
from benchmarks.report import derive, plot, table

SIZES = {"640x480": (640, 480), "12mp": (4032, 3024)}
BATCH_SIZE = 16  # passed to our job and to the tuned peer alike (the job's default)
SYNTH = ("synth", "--format", "npz", "--seed", "0")


def bench_decode(paths: list[str], passes: int = 3) -> float:
    """Images/s of vgg.preprocess.decode_image (squash) on one thread pinned to one core.

    The fastest of `passes` passes over the files: noise on a shared machine only adds time.
    """
    from vgg.preprocess import decode_image

    blobs = []
    for path in paths:
        with open(path, "rb") as handle:
            blobs.append(handle.read())
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(before)})  # the jobs started later inherit the full set again
    try:
        decode_image(blobs[0])
        best = float("inf")
        for _ in range(passes):
            start = time.perf_counter()
            for blob in blobs:
                decode_image(blob)
            best = min(best, time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, before)
    return len(blobs) / best


def timed_job(argv: list[str], timeout_s: float | None = None) -> dict:
    """Runs a command to the end; its wall seconds and its process tree's memory (benchmarks.memory)."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=results.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with memory.TreeSampler(process.pid) as sampler:
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()  # its decoder children exit when their pipes close
            process.communicate()
            raise RuntimeError(f"{' '.join(argv[:4])} ran past its {timeout_s:.0f} s") from None
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed:\n{stderr.decode(errors='replace')[-2000:]}")
    return {"wall_s": wall, "memory": sampler.result()}


def ours(folder: str, out: str, weights: str, *extra: str) -> list[str]:
    """Our job, as a user runs it, with the batch size the tuned peer gets too."""
    return [sys.executable, "-m", "pipeline.run", "--input", f"{folder}/*.jpg", "--output", out,
            "--weights", weights, "--embeddings", "--batch_size", str(BATCH_SIZE), *extra]  # fmt: skip


def steady(rounds: list[dict], n_small: int, n_large: int) -> dict:
    """Start-up and steady rate from two input sizes: rate = extra images / extra time.

    Each size keeps its fastest wall over the rounds: noise on a shared machine only ever
    adds time, and the rate is a difference of two walls, so a slow outlier in either
    would move it by several percent. Memory is the round whose tree peaked highest.
    """
    wall_small = min(r["wall_small_s"] for r in rounds)
    wall_large = min(r["wall_large_s"] for r in rounds)
    if wall_large <= wall_small:
        raise RuntimeError(
            f"the {n_large}-image run ({wall_large:.1f} s) was not slower than the {n_small}-image run "
            f"({wall_small:.1f} s): use more --images, on a machine that is otherwise idle"
        )
    rate = (n_large - n_small) / (wall_large - wall_small)
    return {
        "wall_small_s": wall_small,
        "wall_large_s": wall_large,
        "rounds": [{k: v for k, v in r.items() if k != "memory"} for r in rounds],
        "steady_images_per_s": rate,
        "startup_s": max(wall_small - n_small / rate, 0.0),
        "memory": max((r["memory"] for r in rounds), key=lambda m: m["total_peak_rss_gib"]),
    }


def two_sizes(job, small: str, large: str, out: str) -> dict:
    """One round of a job: its walls on the small and the large input, and its larger tree peak."""
    runs = {"small": timed_job(job(small, out + "-small")), "large": timed_job(job(large, out + "-large"))}
    peak = max((r["memory"] for r in runs.values()), key=lambda m: m["total_peak_rss_gib"])
    return {
        "wall_small_s": runs["small"]["wall_s"],
        "wall_large_s": runs["large"]["wall_s"],
        "total_peak_rss_gib": peak["total_peak_rss_gib"],
        "memory": peak,
    }


def prepare_weights(out: str, weights: str | None, *, for_peers: bool = True) -> tuple[str, str, dict]:
    """(npz or given weights, the same in Keras' h5 for the peers, their description for the JSON).

    Without for_peers the h5 copy is neither made nor checked for (its path is still returned).
    """
    from vgg.weights import describe_weights

    tool = [sys.executable, "-m", "vgg.weights"]  # in children: this process stays small
    os.makedirs(out, exist_ok=True)
    made_with = None
    if weights is None:
        weights = os.path.join(out, "vgg16_untrained.npz")
        made_with = "python -m vgg.weights " + " ".join(SYNTH)
        if not os.path.exists(weights):
            subprocess.run([*tool, *SYNTH, "--out", weights], check=True, cwd=results.REPO)
    h5 = os.path.join(out, "vgg16_keras.h5")
    if for_peers and not os.path.exists(h5):  # the peers load Keras' format
        subprocess.run([*tool, "convert", weights, h5], check=True, cwd=results.REPO)
    info = describe_weights(weights)
    return (
        weights,
        h5,
        {
            "file": results.relative(weights),
            "sha256": info.sha256,
            "untrained": info.untrained,
            "made_with": made_with,
        },
    )


def input_folders(out: str, name: str, size: tuple[int, int], count: int, small_count: int) -> tuple:
    """(small folder, large folder, decode sample) of JPEGs at size; the small one hard-links the first."""
    folder = os.path.join(out, "images", name)
    paths = images.make_images(folder, size, count)
    small = folder + "-small"
    os.makedirs(small, exist_ok=True)
    for path in paths[:small_count]:
        target = os.path.join(small, os.path.basename(path))
        if not os.path.exists(target):
            os.link(path, target)
    return small, folder, paths[:40]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/bench", help="scratch: images, weights, job outputs")
    parser.add_argument("--results", default=results.RESULTS, help="where bench.json, bench.txt, the plot go")
    parser.add_argument("--weights", help="weights file (default: synthesized, UNTRAINED)")
    parser.add_argument("--images", type=int, default=240, help="images in the large run at 640x480")
    parser.add_argument("--batch_sizes", default="1,8,16,32,64", help="bare model batch sizes")
    parser.add_argument("--model_seconds", type=float, default=6.0, help="bare model timing per batch size")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; the fastest wall of each size is kept"
    )
    parser.add_argument("--quick", action="store_true", help="640x480 and float32 only, no thread runs")
    args = parser.parse_args(argv)
    if args.images < 8 or args.rounds < 1:
        parser.error(f"--images must be >= 8 and --rounds >= 1. Received: {args.images}, {args.rounds}")
    args.out = os.path.abspath(args.out)  # the jobs run in the repository root
    weights, h5, weights_info = prepare_weights(args.out, args.weights)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = ["float32"] if args.quick else ["float32", "bfloat16"]
    bare_rounds: dict[str, dict[str, list[dict]]] = {}  # size -> precision -> one result per round
    out = {
        **results.stamp("bench", "benchmarks.bench", argv, device=None),
        "weights": weights_info,
        "batch_size": BATCH_SIZE,
        "rounds": args.rounds,
        "sizes": {},
    }
    for name, size in SIZES.items():
        if args.quick and name != "640x480":
            continue
        count = args.images if name == "640x480" else max(args.images // 2, 8)
        small_count = max(count // 4, 4)
        small, large, sample = input_folders(args.out, name, size, count, small_count)
        entry = {
            "images": {"small": small_count, "large": count, "folder": results.relative(large)},
            "decode_images_per_s_per_core": bench_decode(sample),
        }
        jobs = {
            "ours": lambda d, o: ours(d, o, weights),
            "stock_peer": lambda d, o: peers.command("stock", d, o, h5, BATCH_SIZE),
            "tuned_peer": lambda d, o: peers.command("tuned", d, o, h5, BATCH_SIZE),
        }
        if "bfloat16" in precisions:
            jobs["ours_bfloat16"] = lambda d, o: ours(d, o, weights, "--precision", "bfloat16")
        rounds: dict[str, list[dict]] = {label: [] for label in jobs}
        bare = bare_rounds[name] = {p: [] for p in precisions}
        for r in range(args.rounds):  # interleaved: bare, ours, stock, tuned, ours bf16, bare, ours, ...
            # The bare model in every round of every size: a machine's speed drifts over the
            # run, and each size's L is to bound the jobs measured beside it.
            for p in precisions:
                bare[p].append(model.in_subprocess(weights, batch_sizes, p, args.model_seconds))
            for label, job in jobs.items():
                scratch = os.path.join(args.out, f"run-{name}-{label}-{r}")
                rounds[label].append(two_sizes(job, small, large, scratch))
        for label in jobs:
            entry[label] = steady(rounds[label], small_count, count)
        entry["model"] = {p: model.fastest(bare[p]) for p in precisions}
        out["sizes"][name] = entry
    # The (a) lines: each precision's fastest over every round of every size.
    every = {p: [run for size in bare_rounds.values() for run in size[p]] for p in precisions}
    out["model"] = {p: model.fastest(every[p]) for p in precisions}
    out["machine"]["device"] = out["model"]["float32"]["device"]
    if not args.quick:  # one model copy per process, whatever the DirectRunner's threads
        small = os.path.join(args.out, "images", "640x480-small")
        threads = ("--direct_running_mode=multi_threading", "--direct_num_workers={}")
        out["threads"] = {
            f"threads_{n}": timed_job(
                ours(small, os.path.join(args.out, f"threads{n}"), weights, threads[0], threads[1].format(n))
            )["memory"]
            for n in (1, 4)
        }
    out["derived"] = derive(out)
    text = table(out)
    print(text)
    written = list(results.write(out, text, args.results, "bench"))
    written.append(plot(out, os.path.join(args.results, "throughput_vs_batch.png")))
    print("wrote " + ", ".join(results.relative(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
